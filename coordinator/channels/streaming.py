"""Pay-as-delivered energy over a channel, without I/O.

The seller (the channel's payee) delivers energy in increments
(`increment_wh`, default 10 Wh) and expects, for each increment its meter
readings show delivered, `price_per_increment` sat more in the channel.
When the buyer is behind by more than `credit_sat`, the seller
disconnects its export relay; once the buyer has paid for everything
delivered (owed <= `resume_below_sat`), it reconnects it.

The buyer (the payer) pays for each increment its own meter shows
received: `EnergyBuyer.on_reading` returns the sat to send now.

Both record every reading, increment, payment and relay change to a
journal (`ChannelStore.record_event` fits), and `replay` recomputes the
seller's decisions from a journal so a dispute can be settled from the
record alone.

The relay is anything with `connect()`, `disconnect()` and a `state`
attribute (coordinator/devices/gpio.py provides one for a Pi).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol


class Relay(Protocol):
    state: Any

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...


class Journal(Protocol):
    def record_event(self, channel_id: bytes, at: float, kind: str, wh: float | None = None,
                     amount: int | None = None, seq: int | None = None, detail: str = "") -> None: ...


class StreamError(ValueError):
    pass


@dataclass(frozen=True)
class StreamTerms:
    price_per_increment: int  # sat per increment
    increment_wh: float = 10.0
    credit_sat: int = 0       # how far the buyer may be behind before the relay opens
    resume_below_sat: int = 0  # owed at or below this, the relay closes again

    def __post_init__(self) -> None:
        if self.increment_wh <= 0:
            raise StreamError(f"increment {self.increment_wh} Wh: expected > 0")
        if self.price_per_increment <= 0:
            raise StreamError(f"price {self.price_per_increment} sat per increment: expected > 0")
        if self.credit_sat < 0 or self.resume_below_sat < 0 or self.resume_below_sat > self.credit_sat:
            raise StreamError(f"credit {self.credit_sat} / resume {self.resume_below_sat} sat: "
                              "expected 0 <= resume <= credit")

    @classmethod
    def from_price_per_kwh(cls, sat_per_kwh: int, increment_wh: float = 10.0, credit_increments: int = 2,
                           ) -> "StreamTerms":
        price = max(1, round(sat_per_kwh * increment_wh / 1000))
        return cls(price, increment_wh, credit_increments * price, 0)


def increments_in(terms: StreamTerms, wh: float) -> int:
    # A little tolerance so 0.1 + 0.2 style sums do not lose an increment.
    return max(0, math.floor(wh / terms.increment_wh + 1e-9))


@dataclass
class EnergySeller:
    """The payee's view of one energy stream on one channel."""

    channel_id: bytes
    terms: StreamTerms
    relay: Relay
    journal: Journal | None = None
    start_wh: float | None = None   # meter total at the start of the stream
    last_wh: float = 0.0
    increments: int = 0
    paid: int = 0                   # sat received in this stream
    exporting: bool = True
    decisions: list[tuple[float, str]] = field(default_factory=list)

    @property
    def due(self) -> int:
        return self.increments * self.terms.price_per_increment

    @property
    def owed(self) -> int:
        return self.due - self.paid

    def _log(self, at: float, kind: str, wh: float | None = None, amount: int | None = None,
             seq: int | None = None, detail: str = "") -> None:
        if self.journal is not None:
            self.journal.record_event(self.channel_id, at, kind, wh, amount, seq, detail)

    def on_reading(self, wh_total: float, at: float) -> int:
        """A meter reading of energy exported to this buyer (cumulative
        Wh). Returns the number of new increments delivered."""
        if self.start_wh is None:
            self.start_wh = wh_total
            self._log(at, "start", wh_total, detail=f"{self.terms}")
        if wh_total < self.last_wh:
            raise StreamError(f"meter total {wh_total} Wh went backwards from {self.last_wh} Wh")
        self.last_wh = wh_total
        self._log(at, "reading", wh_total)
        n = increments_in(self.terms, wh_total - self.start_wh)
        new = n - self.increments
        for i in range(self.increments + 1, n + 1):
            self._log(at, "increment", self.start_wh + i * self.terms.increment_wh, self.terms.price_per_increment,
                      seq=i)
        self.increments = n
        self._decide(at)
        return new

    def on_payment(self, delta: int, seq: int, at: float) -> None:
        self.paid += delta
        self._log(at, "payment", amount=delta, seq=seq)
        self._decide(at)

    def _decide(self, at: float) -> None:
        owed = self.owed
        if self.exporting and owed > self.terms.credit_sat:
            self.relay.disconnect()
            self.exporting = False
            self.decisions.append((at, "disconnect"))
            self._log(at, "relay-off", amount=owed, detail=f"owed {owed} > credit {self.terms.credit_sat}; "
                      f"relay state {self.relay.state!r}")
        elif not self.exporting and owed <= self.terms.resume_below_sat:
            self.relay.connect()
            self.exporting = True
            self.decisions.append((at, "connect"))
            self._log(at, "relay-on", amount=owed, detail=f"owed {owed} <= {self.terms.resume_below_sat}; "
                      f"relay state {self.relay.state!r}")

    def listener(self, channel_id: bytes, delta: int, update: Any, at: float = 0.0) -> None:
        """For `ChannelNode.payment_listeners` (pass `at` through a lambda
        to journal the node's clock)."""
        if channel_id == self.channel_id:
            self.on_payment(delta, update.seq, at)


@dataclass
class EnergyBuyer:
    """The payer's view: pays for each increment its meter shows received."""

    channel_id: bytes
    terms: StreamTerms
    journal: Journal | None = None
    start_wh: float | None = None
    increments: int = 0
    paid: int = 0

    def on_reading(self, wh_total: float, at: float) -> int:
        """Returns the sat to pay now for increments not yet paid."""
        if self.start_wh is None:
            self.start_wh = wh_total
        if self.journal is not None:
            self.journal.record_event(self.channel_id, at, "reading", wh_total)
        self.increments = increments_in(self.terms, wh_total - self.start_wh)
        return max(0, self.increments * self.terms.price_per_increment - self.paid)

    def on_paid(self, amount: int, seq: int, at: float) -> None:
        self.paid += amount
        if self.journal is not None:
            self.journal.record_event(self.channel_id, at, "payment", amount=amount, seq=seq)


@dataclass(frozen=True)
class Replay:
    increments: int
    due: int
    paid: int
    decisions: list[tuple[float, str]]
    recorded: list[tuple[float, str]]

    @property
    def consistent(self) -> bool:
        """The recorded relay changes are the ones the rules give."""
        return self.decisions == self.recorded


def replay(terms: StreamTerms, events: list[dict[str, Any]]) -> Replay:
    """Recompute a seller's stream from its journal (`ChannelStore.events`)."""

    class _Relay:
        state = "replay"

        def connect(self) -> None:
            pass

        def disconnect(self) -> None:
            pass

    s = EnergySeller(b"", terms, _Relay())
    recorded = []
    for ev in events:
        if ev["kind"] == "reading":
            s.on_reading(ev["wh"], ev["at"])
        elif ev["kind"] == "payment":
            s.on_payment(ev["amount"], ev["seq"], ev["at"])
        elif ev["kind"] in ("relay-off", "relay-on"):
            recorded.append((ev["at"], "disconnect" if ev["kind"] == "relay-off" else "connect"))
    return Replay(s.increments, s.due, s.paid, s.decisions, recorded)
