"""A seller's view of its buyers: what the settled intervals say each owes,
what each has paid through its channel, and the export relay that opens
while one is too far behind. Pure bookkeeping; the relay is anything with
connect(), disconnect() and a `state` ("connected"/"disconnected")."""

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
        self.owed: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.disconnects = 0

    def owe(self, buyer: str, sats: int) -> None:
        self.owed[buyer] = self.owed.get(buyer, 0) + sats
        self.enforce()

    def paid(self, buyer: str, sats: int) -> None:
        self.received[buyer] = self.received.get(buyer, 0) + sats
        self.enforce()

    def behind(self) -> dict[str, int]:
        """Buyers owing more than they have paid, in sat."""
        out = {}
        for buyer, owed in self.owed.items():
            gap = owed - self.received.get(buyer, 0)
            if gap > 0:
                out[buyer] = gap
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
