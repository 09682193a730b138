"""A seller's view of its buyers: what the settled intervals say each owes,
what each buyer's stream should have reached in the intervals still
running, what each has paid through its channel, and the export relay
that opens while one is too far behind. Pure bookkeeping; the relay is
anything with connect(), disconnect() and a `state`
("connected"/"disconnected").

During an interval a seller cannot tell from its own meters which buyer
took its energy; it judges each buyer on what that buyer's own published
import and the sellers' published exports say its stream owes
(trading/delivery.py, the same rule the buyer pays by). Once the interval
is settled, the settlement's figure replaces that estimate."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("microgrid.trading.credit")


class SellerCredit:
    def __init__(self, credit_sat: int, relay: Any = None) -> None:
        if credit_sat < 0:
            raise ValueError(f"credit_sat={credit_sat}: expected >= 0")
        self.credit_sat = credit_sat
        self.relay = relay
        self.owed: dict[str, int] = {}  # by settled intervals
        self.streaming: dict[int, dict[str, int]] = {}  # interval -> buyer -> its stream should be at
        self.received: dict[str, int] = {}
        self.disconnects = 0

    def expect_streamed(self, interval_start: int, buyer: str, sats: int) -> None:
        """What `buyer`'s stream should have reached so far in an interval
        not yet settled; it only grows."""
        if sats < 0:
            raise ValueError(f"expected {sats} sat: expected >= 0")
        running = self.streaming.setdefault(interval_start, {})
        running[buyer] = max(running.get(buyer, 0), sats)
        self.enforce()

    def settled(self, interval_start: int, dues: dict[str, int]) -> None:
        """An interval is settled: its `dues` (buyer -> sat) replace what
        its stream was expected to reach."""
        self.streaming.pop(interval_start, None)
        for buyer, sats in dues.items():
            self.owed[buyer] = self.owed.get(buyer, 0) + sats
        self.enforce()

    def forget(self, interval_start: int) -> None:
        """An interval we could not settle: its estimate goes rather than
        hold a buyer to it for ever (our failure is not theirs)."""
        if self.streaming.pop(interval_start, None) is not None:
            self.enforce()

    def paid(self, buyer: str, sats: int) -> None:
        self.received[buyer] = self.received.get(buyer, 0) + sats
        self.enforce()

    def behind(self) -> dict[str, int]:
        """Buyers owing more than they have paid, in sat."""
        due = dict(self.owed)
        for running in self.streaming.values():
            for buyer, sats in running.items():
                due[buyer] = due.get(buyer, 0) + sats
        out = {}
        for buyer, sats in due.items():
            gap = sats - self.received.get(buyer, 0)
            if gap > 0:
                out[buyer] = gap
        return out

    def lines(self) -> list[str]:
        """For the technician's console: each buyer behind, and the relay."""
        out = [f"buyer {buyer[:16]} is {gap} sat behind (credit {self.credit_sat} sat)"
               for buyer, gap in sorted(self.behind().items())]
        if self.relay is not None:
            out.append(f"export relay {self.relay.state}, opened {self.disconnects} time(s) on a buyer behind")
        return out

    def enforce(self) -> None:
        """Open the relay while a buyer is more than `credit_sat` behind;
        close it again once every buyer has caught up."""
        if self.relay is None:
            return
        worst = max(self.behind().values(), default=0)
        connected = str(self.relay.state) == "connected"
        if worst > self.credit_sat and connected:
            log.warning("a buyer is %d sat behind (credit %d): export relay opened", worst, self.credit_sat)
            self.relay.disconnect()
            self.disconnects += 1
        elif worst == 0 and not connected:
            log.info("every buyer has paid: export relay closed again")
            self.relay.connect()
