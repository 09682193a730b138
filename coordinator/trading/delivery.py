"""Paying as energy arrives: a buyer's running import, shared out over its
trades of the interval, becomes what it owes each seller so far. Pure.

After the interval, settlement (market/settlement.py) decides what each
trade delivered: min(trade Wh, seller's export left, buyer's import left),
in trade order, and each buyer-seller pair is paid its exact
millisatoshi rounded up once. While the interval runs the
buyer knows its own meters, and each seller's running export as the
seller publishes it (signed, on the overlay): it streams payment for whole
increments of what both show, handed to its trades in that same order,
capped at each trade's Wh, and assuming every earlier trade takes all it
can of the seller's export and of the buyer's import; per seller the
exact millisatoshi are rounded down, never up as settlement does. So the
stream stays behind what settlement will say is owed
(tests/trading/test_delivery.py checks it on random books and meters),
and settlement tops it up. Should it ever run ahead (a net import that
export later in the interval offsets),
`SellerAccounts` counts every satoshi against what is owed to that
seller later, so nothing is paid twice and nothing is lost.

This is not channels/streaming.EnergyBuyer: that engine prices one stream
at a whole number of satoshis per increment, while a trade's price is per
kWh and its payments must round exactly as settlement rounds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..market.clearing import Trade, trade_msat


@dataclass(frozen=True)
class Due:
    wh: int  # whole increments received against this seller's trades
    sats: int  # what they are worth: exact msat per seller, rounded down


def streamed_due(trades: Iterable[Trade], buyer: bytes, import_wh: int, increment_wh: int,
                 seller_export: Mapping[bytes, int] | None = None) -> dict[bytes, Due]:
    """Per seller, what `buyer` owes for `import_wh` received so far in
    the interval of `trades` (the cleared interval's trades, in order).
    With `seller_export` (seller -> Wh exported so far; a seller missing
    from it has shown nothing yet), no seller is paid beyond it."""
    if increment_wh <= 0:
        raise ValueError(f"increment {increment_wh} Wh: expected > 0")
    left = max(import_wh, 0)
    export_left = None if seller_export is None else {s: max(wh, 0) for s, wh in seller_export.items()}
    wh: dict[bytes, int] = {}
    msat: dict[bytes, int] = {}
    for t in trades:
        # Every earlier trade is assumed to take all it can, of the seller's
        # export and of our import, before this one: what is left is no
        # more than settlement will find left, whatever the meters show by
        # the end, so the stream never runs ahead of the settlement.
        exported = t.wh if export_left is None else min(t.wh, export_left.get(t.seller, 0))
        if export_left is not None:
            export_left[t.seller] = export_left.get(t.seller, 0) - exported
        if t.buyer != buyer:
            continue
        imported = min(t.wh, left)
        left -= imported
        got = min(imported, exported)
        whole = got // increment_wh * increment_wh
        wh[t.seller] = wh.get(t.seller, 0) + whole
        msat[t.seller] = msat.get(t.seller, 0) + trade_msat(whole, t.price_sat_per_kwh)
    return {s: Due(wh[s], msat[s] // 1000) for s in wh}


def expected_streams(trades: Iterable[Trade], seller: bytes, live: Mapping[bytes, tuple[int, int]],
                     increment_wh: int) -> dict[bytes, int]:
    """The seller's side of `streamed_due`: per buyer of `seller`, the
    satoshis its stream should have paid `seller` by now, by the rule
    buyers pay by, from the participants' live records (publisher ->
    (export Wh, import Wh) so far). A buyer with no record yet owes
    nothing yet; settlement judges it after the interval. A participant
    matched against itself pays nobody."""
    trades = list(trades)
    exports = {p: v[0] for p, v in live.items()}
    out: dict[bytes, int] = {}
    for buyer in sorted({t.buyer for t in trades if t.seller == seller and t.buyer != seller}):
        if buyer not in live:
            continue
        due = streamed_due(trades, buyer, live[buyer][1], increment_wh, exports).get(seller)
        if due is not None and due.sats > 0:
            out[buyer] = due.sats
    return out


def live_needed(trades: Iterable[Trade], me: bytes) -> set[bytes]:
    """Whose live records `me` needs while the interval of `trades` runs:
    as a buyer, its sellers' exports (streamed_due); as a seller, its
    buyers' imports and their sellers' exports (expected_streams). Read by
    name, these few records are all that travels: the zone's whole live
    key would bring every trader's every version (overlay/README.md)."""
    trades = list(trades)
    buyers = {t.buyer for t in trades if t.seller == me}
    needed = {t.seller for t in trades if t.buyer == me} | buyers | {t.seller for t in trades if t.buyer in buyers}
    needed.discard(me)
    return needed


@dataclass
class SellerAccounts:
    """A buyer's running account with each seller (public key hex): what
    the settled intervals say it owes, and what it has signed through the
    seller's channel, streamed or settled. The difference, when positive,
    is what settlement still pays; when negative, a prepayment that counts
    against the next interval."""

    owed: dict[str, int] = field(default_factory=dict)
    signed: dict[str, int] = field(default_factory=dict)

    def add_signed(self, seller: str, sats: int) -> None:
        if sats < 0:
            raise ValueError(f"signed {sats} sat: expected >= 0")
        self.signed[seller] = self.signed.get(seller, 0) + sats

    def settle(self, seller: str, sats: int) -> int:
        """Add an interval's settled `sats`; returns what to pay now."""
        if sats < 0:
            raise ValueError(f"settled {sats} sat: expected >= 0")
        self.owed[seller] = self.owed.get(seller, 0) + sats
        return self.unpaid(seller)

    def unpaid(self, seller: str) -> int:
        """Satoshis settlement says are owed and not yet signed."""
        return max(0, self.owed.get(seller, 0) - self.signed.get(seller, 0))

    def prepaid(self, seller: str) -> int:
        """Satoshis signed ahead of what settlement has said is owed."""
        return max(0, self.signed.get(seller, 0) - self.owed.get(seller, 0))

    def sellers(self) -> list[str]:
        return sorted(set(self.owed) | set(self.signed))

    def lines(self) -> list[str]:
        """One line per seller for the technician's console."""
        out = []
        for seller in self.sellers():
            ahead, behind = self.prepaid(seller), self.unpaid(seller)
            state = f"{ahead} sat paid ahead" if ahead else f"{behind} sat still to pay" if behind else "settled"
            out.append(f"paying {seller[:16]}: {self.signed.get(seller, 0)} sat signed, "
                       f"{self.owed.get(seller, 0)} sat owed by settlements ({state})")
        return out
