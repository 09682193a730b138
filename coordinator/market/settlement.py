"""Delivery and settlement: matched trades -> delivery schedules; metered
energy -> payment instructions; every Wh accounted for. Pure.

For one zone and interval:

1. Schedule. `delivery_schedule` lists, per participant, the Wh it sold
   (to put into the zone) and bought (to take from it).
2. Metering. Each participant's meter gives the Wh exported and imported
   at its connection during the interval (`Metered`). A participant
   without a reading counts as 0 / 0 and is listed as `unmetered`.
3. Delivered energy per trade, in the clearing's trade order:
       delivered = min(trade Wh, seller's export not yet used,
                       buyer's import not yet used)
   so no trade is paid beyond its matched quantity, nor beyond what was
   really exported and imported.
4. Payments, as in clearing.py rule 6: exact millisatoshi summed per
   buyer-seller pair (and per buyer for the grid fee) over the interval,
   then rounded up once to whole satoshis:
       buyer -> seller    ceil(sum(delivered * price) / 1000) sats
       buyer -> operator  ceil(sum(delivered) * grid fee / 1000) sats
   so splitting orders changes nothing, and no seller is paid below its
   limit for what it delivered. One P2P instruction per pair.
5. The utility takes the rest (one line per participant, rounded down
   as before: the utility's bill is not a market amount): a participant's import beyond what it was
   delivered by peers is bought from the utility at the import tariff
   (a seller's shortfall thus lands on its buyer as ordinary utility
   import); export beyond what peers took is sold to the utility at the
   export tariff (a buyer's shortfall thus lands on its seller):
       participant -> utility  floor(utility import Wh * import tariff / 1000)
       utility -> participant  floor(utility export Wh * export tariff / 1000)
6. Balance (`check_energy_balance`): per participant
       export = sold to peers + utility export
       import = bought from peers + utility import
   and for the zone: sum exports + utility imports = sum imports + utility
   exports, exact to the Wh.

Payment instructions name participants by public key (hex) and the two
other parties by UTILITY and the zone operator's name; the payment-channel
layer turns them into channel updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .clearing import ClearedInterval, sats_of, trade_msat, trade_value

UTILITY = "utility"
OPERATOR = "operator"

P2P = "p2p"  # buyer -> seller for energy delivered
GRID_FEE = "grid fee"  # buyer -> operator
UTILITY_IMPORT = "utility import"  # participant -> utility
UTILITY_EXPORT = "utility export"  # utility -> participant


class SettlementError(ValueError):
    """Inputs that cannot be settled, or a balance that does not close."""


@dataclass(frozen=True)
class Tariff:
    """The utility's prices for the zone (from config), sat/kWh."""

    import_sat_per_kwh: int
    export_sat_per_kwh: int

    def __post_init__(self) -> None:
        for name in ("import_sat_per_kwh", "export_sat_per_kwh"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SettlementError(f"{name}={v!r}: expected an integer >= 0")


@dataclass(frozen=True)
class Delivery:
    participant: bytes  # public key
    zone: str
    interval_start: int
    interval_s: int
    sell_wh: int  # to deliver into the zone
    buy_wh: int  # to take from the zone


@dataclass(frozen=True)
class Metered:
    """A participant's meter over one interval, at its connection."""

    participant: bytes
    export_wh: int
    import_wh: int

    def __post_init__(self) -> None:
        for name in ("export_wh", "import_wh"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SettlementError(f"{name}={v!r} for {self.participant.hex()[:16]}: expected an integer Wh >= 0")


@dataclass(frozen=True)
class PaymentInstruction:
    payer: str  # participant public key hex, UTILITY
    payee: str  # participant public key hex, UTILITY, operator name
    sats: int
    wh: int
    kind: str  # P2P, GRID_FEE, UTILITY_IMPORT, UTILITY_EXPORT
    zone: str
    interval_start: int
    ref: str = ""  # "<buyer key>:<seller key>" for a P2P payment
    msat: int = 0  # the exact amount before rounding (P2P, grid fee); sats = ceil(msat / 1000)


@dataclass
class ParticipantResult:
    participant: str  # public key hex
    matched_buy_wh: int = 0
    matched_sell_wh: int = 0
    bought_wh: int = 0  # delivered to it by peers
    sold_wh: int = 0  # delivered by it to peers
    paid_sat: int = 0  # to peers, grid fees and the utility
    earned_sat: int = 0  # from peers and the utility
    import_wh: int = 0  # metered
    export_wh: int = 0  # metered
    utility_import_wh: int = 0
    utility_export_wh: int = 0
    metered: bool = True

    @property
    def shortfall_wh(self) -> int:
        """Matched but not delivered, on either side."""
        return (self.matched_buy_wh - self.bought_wh) + (self.matched_sell_wh - self.sold_wh)


@dataclass
class IntervalSettlement:
    zone: str
    interval_start: int
    interval_s: int
    price_sat_per_kwh: int | None
    matched_wh: int
    delivered_wh: int
    participants: list[ParticipantResult]
    payments: list[PaymentInstruction]
    book_hash: bytes
    unmetered: list[str] = field(default_factory=list)

    @property
    def import_wh(self) -> int:
        return sum(p.import_wh for p in self.participants)

    @property
    def export_wh(self) -> int:
        return sum(p.export_wh for p in self.participants)

    @property
    def utility_import_wh(self) -> int:
        return sum(p.utility_import_wh for p in self.participants)

    @property
    def utility_export_wh(self) -> int:
        return sum(p.utility_export_wh for p in self.participants)

    @property
    def self_sufficiency_ppm(self) -> int | None:
        """Parts per million of the zone's imports supplied from within the
        zone (None when nobody imported)."""
        total = self.import_wh
        return None if total == 0 else self.delivered_wh * 1_000_000 // total


def delivery_schedule(cleared: ClearedInterval) -> list[Delivery]:
    """Per participant, what it must deliver and take; sorted by key."""
    sell: dict[bytes, int] = {}
    buy: dict[bytes, int] = {}
    for t in cleared.trades:
        sell[t.seller] = sell.get(t.seller, 0) + t.wh
        buy[t.buyer] = buy.get(t.buyer, 0) + t.wh
    return [Delivery(p, cleared.zone, cleared.interval_start, cleared.interval_s, sell.get(p, 0), buy.get(p, 0))
            for p in sorted(set(sell) | set(buy))]


def settle_interval(cleared: ClearedInterval, metered: Iterable[Metered], tariff: Tariff,
                    operator: str = OPERATOR) -> IntervalSettlement:
    """Settle one zone's interval from its cleared book and meter readings."""
    readings: dict[bytes, Metered] = {}
    for m in metered:
        if m.participant in readings:
            raise SettlementError(f"two meter readings for {m.participant.hex()[:16]} in"
                                  f" {cleared.zone}/{cleared.interval_start}: expected one per participant")
        readings[m.participant] = m
    people = set(readings) | {t.buyer for t in cleared.trades} | {t.seller for t in cleared.trades}
    res = {p: ParticipantResult(p.hex()) for p in people}
    for p, r in res.items():
        reading = readings.get(p)
        r.metered = reading is not None
        r.export_wh = reading.export_wh if reading else 0
        r.import_wh = reading.import_wh if reading else 0
    export_left = {p: r.export_wh for p, r in res.items()}
    import_left = {p: r.import_wh for p, r in res.items()}
    zone, start = cleared.zone, cleared.interval_start
    payments: list[PaymentInstruction] = []
    delivered_total = 0
    pair_wh: dict[tuple[bytes, bytes], int] = {}
    pair_msat: dict[tuple[bytes, bytes], int] = {}
    fee_wh: dict[bytes, int] = {}
    fee = cleared.rules.grid_fee_sat_per_kwh
    for t in cleared.trades:
        b, s = res[t.buyer], res[t.seller]
        b.matched_buy_wh += t.wh
        s.matched_sell_wh += t.wh
        d = min(t.wh, export_left[t.seller], import_left[t.buyer])
        if not d:
            continue
        export_left[t.seller] -= d
        import_left[t.buyer] -= d
        b.bought_wh += d
        s.sold_wh += d
        delivered_total += d
        pair = (t.buyer, t.seller)
        pair_wh[pair] = pair_wh.get(pair, 0) + d
        pair_msat[pair] = pair_msat.get(pair, 0) + trade_msat(d, t.price_sat_per_kwh)
        fee_wh[t.buyer] = fee_wh.get(t.buyer, 0) + d
    # Rule 6 of clearing.py: exact msat per pair, rounded up once.
    for pair in sorted(pair_wh):
        b, s = res[pair[0]], res[pair[1]]
        msat = pair_msat[pair]
        sats = sats_of(msat)
        payments.append(PaymentInstruction(b.participant, s.participant, sats, pair_wh[pair], P2P, zone, start,
                                           f"{b.participant}:{s.participant}", msat))
        b.paid_sat += sats
        s.earned_sat += sats
    for buyer in sorted(fee_wh):
        msat = trade_msat(fee_wh[buyer], fee)
        if msat:
            b = res[buyer]
            sats = sats_of(msat)
            payments.append(PaymentInstruction(b.participant, operator, sats, fee_wh[buyer], GRID_FEE, zone, start,
                                               "", msat))
            b.paid_sat += sats
    for p in sorted(res):
        r = res[p]
        r.utility_import_wh = import_left[p]
        r.utility_export_wh = export_left[p]
        if r.utility_import_wh:
            sats = trade_value(r.utility_import_wh, tariff.import_sat_per_kwh)
            payments.append(PaymentInstruction(r.participant, UTILITY, sats, r.utility_import_wh,
                                               UTILITY_IMPORT, zone, start))
            r.paid_sat += sats
        if r.utility_export_wh:
            sats = trade_value(r.utility_export_wh, tariff.export_sat_per_kwh)
            payments.append(PaymentInstruction(UTILITY, r.participant, sats, r.utility_export_wh,
                                               UTILITY_EXPORT, zone, start))
            r.earned_sat += sats
    settled = IntervalSettlement(zone, start, cleared.interval_s, cleared.price_sat_per_kwh, cleared.volume_wh,
                                 delivered_total, [res[p] for p in sorted(res)], payments, cleared.hash,
                                 [res[p].participant for p in sorted(res) if not res[p].metered])
    check_energy_balance(settled)
    return settled


def check_energy_balance(s: IntervalSettlement) -> None:
    """Raise SettlementError unless every Wh is accounted for."""
    where = f"{s.zone}/{s.interval_start}"
    for r in s.participants:
        if r.export_wh != r.sold_wh + r.utility_export_wh:
            raise SettlementError(f"{where} {r.participant[:16]}: export {r.export_wh} Wh != sold {r.sold_wh}"
                                  f" + utility export {r.utility_export_wh}")
        if r.import_wh != r.bought_wh + r.utility_import_wh:
            raise SettlementError(f"{where} {r.participant[:16]}: import {r.import_wh} Wh != bought {r.bought_wh}"
                                  f" + utility import {r.utility_import_wh}")
        if r.bought_wh > r.matched_buy_wh or r.sold_wh > r.matched_sell_wh:
            raise SettlementError(f"{where} {r.participant[:16]}: delivered beyond the matched quantity")
    sold, bought = sum(r.sold_wh for r in s.participants), sum(r.bought_wh for r in s.participants)
    if not sold == bought == s.delivered_wh:
        raise SettlementError(f"{where}: sold {sold} Wh, bought {bought} Wh, delivered {s.delivered_wh}: expected equal")
    if s.export_wh + s.utility_import_wh != s.import_wh + s.utility_export_wh:
        raise SettlementError(f"{where}: exports {s.export_wh} + utility imports {s.utility_import_wh} !="
                              f" imports {s.import_wh} + utility exports {s.utility_export_wh}")


# -- reporting --------------------------------------------------------------------


def report(s: IntervalSettlement) -> dict[str, Any]:
    """One interval as plain data (JSON-ready) for the console, MQTT and
    the demo's report."""
    return {
        "zone": s.zone, "interval_start": s.interval_start, "interval_s": s.interval_s,
        "clearing_price_sat_per_kwh": s.price_sat_per_kwh, "matched_wh": s.matched_wh,
        "delivered_wh": s.delivered_wh, "import_wh": s.import_wh, "export_wh": s.export_wh,
        "utility_import_wh": s.utility_import_wh, "utility_export_wh": s.utility_export_wh,
        "self_sufficiency_ppm": s.self_sufficiency_ppm, "book_hash": s.book_hash.hex(),
        "unmetered": list(s.unmetered),
        "participants": {r.participant: {
            "bought_wh": r.bought_wh, "sold_wh": r.sold_wh, "paid_sat": r.paid_sat, "earned_sat": r.earned_sat,
            "matched_buy_wh": r.matched_buy_wh, "matched_sell_wh": r.matched_sell_wh,
            "utility_import_wh": r.utility_import_wh, "utility_export_wh": r.utility_export_wh,
            "import_wh": r.import_wh, "export_wh": r.export_wh,
        } for r in s.participants},
    }


def unsettled_report(zone: str, interval_start: int, interval_s: int, reason: str) -> dict[str, Any]:
    """An interval cleared but not settled here (no quorum of the zone's
    coordinators agreed on its book: market/repair.py), as `report` shapes
    a settled one, saying why."""
    return {"zone": zone, "interval_start": interval_start, "interval_s": interval_s, "settled": False,
            "reason": reason}


def report_lines(s: IntervalSettlement, names: Mapping[str, str] | None = None) -> list[str]:
    """One interval as console lines; `names` maps public key hex to a
    household's name."""
    names = names or {}
    ss = s.self_sufficiency_ppm
    price = "-" if s.price_sat_per_kwh is None else f"{s.price_sat_per_kwh} sat/kWh"
    lines = [f"{s.zone} @{s.interval_start} ({s.interval_s // 60} min): price {price}, matched {s.matched_wh} Wh,"
             f" delivered {s.delivered_wh} Wh, self-sufficiency {'-' if ss is None else f'{ss / 10_000:.1f}%'}"]
    for r in s.participants:
        who = names.get(r.participant, r.participant[:16])
        lines.append(f"  {who}: bought {r.bought_wh} Wh, sold {r.sold_wh} Wh, utility in {r.utility_import_wh} Wh /"
                     f" out {r.utility_export_wh} Wh, paid {r.paid_sat} sat, earned {r.earned_sat} sat")
    return lines
