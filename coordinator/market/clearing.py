"""Deterministic clearing: a double auction per zone and interval.

Every coordinator runs this on the orders it collected for a zone and
interval; from the same set of orders every machine gets the same bytes
(`ClearedInterval.encoded`) and so the same `hash`, with no central
operator. Pure: no clock, no I/O, no floating point.

The rules (the contract between coordinators; change them only with a new
FORMAT_VERSION):

1. Input. Orders for one (zone, interval start, interval length). An order
   appearing twice counts once; of two orders with one (owner, nonce) the
   lower hash is kept (orders.dedupe). Arrival order never matters.
2. Grid fee. With a fee of F sat/kWh a buyer with limit L competes with its
   effective limit L - F: it pays the energy price plus F. A buyer whose
   limit is below F cannot trade.
3. Priority. Buyers by effective limit, highest first; sellers by limit,
   lowest first. Ties: earlier `created` first, then the lower order hash
   (bytes compared). Hashes are unique, so the order is total.
4. Matching. Walk both lists in priority order, matching the best remaining
   buyer with the best remaining seller while the buyer's effective limit
   >= the seller's limit and the feeder capacity (Wh per interval) is not
   reached. Each step trades min(buyer's rest, seller's rest, capacity
   left) Wh: orders fill partially. This trades the largest volume any
   single price could (property-tested against a brute force reference).
5. Price.
   - pay-as-clear (default): one price for every trade, the midpoint of
     the last matched pair (the marginal buyer's effective limit and the
     marginal seller's limit), rounded down. Every matched buyer's limit is
     at or above it, every matched seller's at or below.
   - pay-as-bid: each trade at the midpoint of its own buyer's effective
     limit and seller's limit, rounded down.
6. Money. Integer arithmetic. A trade of W Wh at P sat/kWh is worth
   floor(W * P / 1000) sats, paid by the buyer to the seller; the grid fee
   is floor(W * F / 1000) sats, paid by the buyer to the zone's operator.
   Rounding is per trade and always down (in the payer's favour), so what
   one side pays the other side receives exactly.

Encoding of a cleared interval (canonical CBOR map, integer labels):

    0 v        1
    1 zone     text
    2 start    uint  interval start
    3 length   uint  interval length, s
    4 rules    [capacity_wh or null, grid_fee_sat_per_kwh, pricing]
    5 price    uint or null  clearing price (pay-as-clear), null if no trade
    6 volume   uint  Wh traded
    7 orders   [bytes]  hashes of the orders cleared, sorted
    8 trades   [[buy hash, sell hash, wh, price, sats, fee sats]] in
               matching order

`hash` is sha256 of that encoding: since it covers the order set, two
coordinators that saw different orders get different hashes even when
their trades happen to agree. `compare_books` reports who disagrees and,
given the peers' order lists, which orders one side lacked.

Known limits:
- `created` is the owner's own claim; it only orders equal prices, and an
  order must claim a time before gate closure, but an owner can backdate it
  to win ties at its price.
- An owner's buy may meet its own sell (nothing is gained or lost but the
  grid fee); pricing.py never places both sides for one interval.
- Which orders a coordinator saw by gate closure depends on its clock and
  the overlay; that is what the hash exchange detects, not prevents.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple, Sequence

import cbor2

from .orders import BUY, DEFAULT_INTERVAL_S, SignedOrder, dedupe

log = logging.getLogger("microgrid.market.clearing")

FORMAT_VERSION = 1
PAY_AS_CLEAR = "pay-as-clear"
PAY_AS_BID = "pay-as-bid"
PRICING = (PAY_AS_CLEAR, PAY_AS_BID)


class ClearingError(ValueError):
    """Orders or rules that cannot be cleared together."""


@dataclass(frozen=True)
class ZoneRules:
    """What a zone's coordinators agree on (from config)."""

    capacity_wh: int | None = None  # feeder limit per interval; None = unlimited
    grid_fee_sat_per_kwh: int = 0
    pricing: str = PAY_AS_CLEAR

    def __post_init__(self) -> None:
        cap = self.capacity_wh
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise ClearingError(f"capacity_wh={cap!r}: expected None or an integer >= 0")
        fee = self.grid_fee_sat_per_kwh
        if isinstance(fee, bool) or not isinstance(fee, int) or fee < 0:
            raise ClearingError(f"grid_fee_sat_per_kwh={fee!r}: expected an integer >= 0")
        if self.pricing not in PRICING:
            raise ClearingError(f"pricing={self.pricing!r}: expected one of {PRICING}")


class Trade(NamedTuple):
    buy: bytes  # buy order hash
    sell: bytes  # sell order hash
    buyer: bytes  # owner public keys
    seller: bytes
    wh: int
    price_sat_per_kwh: int
    sats: int  # buyer -> seller
    fee_sats: int  # buyer -> zone operator


@dataclass(frozen=True)
class ClearedInterval:
    zone: str
    interval_start: int
    interval_s: int
    rules: ZoneRules
    price_sat_per_kwh: int | None
    volume_wh: int
    trades: tuple[Trade, ...]
    order_hashes: tuple[bytes, ...]
    fills: Mapping[bytes, int] = field(compare=False, hash=False)  # order hash -> Wh filled
    encoded: bytes = field(compare=False, hash=False, default=b"")
    hash: bytes = b""

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.zone, self.interval_start, self.interval_s)


def trade_value(wh: int, price_sat_per_kwh: int) -> int:
    """floor(wh * price / 1000): the documented rounding rule."""
    return wh * price_sat_per_kwh // 1000


def clear_interval(orders: Iterable[SignedOrder], zone: str, interval_start: int,
                   interval_s: int = DEFAULT_INTERVAL_S, rules: ZoneRules = ZoneRules()) -> ClearedInterval:
    """Clear one zone's interval. Raises ClearingError for an order of
    another zone or interval."""
    book = dedupe(orders)
    want = (zone, interval_start, interval_s)
    fee = rules.grid_fee_sat_per_kwh
    # Rows sort by priority (rules 2 and 3): buyers by -(limit - fee), sellers
    # by limit, then created, then hash.
    buy_rows: list[tuple[int, int, bytes, int, bytes, int]] = []
    sell_rows: list[tuple[int, int, bytes, int, bytes, int]] = []
    for so in book:
        o = so.order
        if (o.zone, o.interval_start, o.interval_s) != want:
            raise ClearingError(f"order {so.hash_hex[:16]} for {o.zone}/{o.interval_start}+{o.interval_s}s:"
                                f" expected {zone}/{interval_start}+{interval_s}s")
        if o.side == BUY:
            eff = o.limit_sat_per_kwh - fee
            buy_rows.append((-eff, o.created, so.hash, o.quantity_wh, o.owner, eff))
        else:
            sell_rows.append((o.limit_sat_per_kwh, o.created, so.hash, o.quantity_wh, o.owner,
                              o.limit_sat_per_kwh))
    buy_rows.sort()
    sell_rows.sort()
    cap = rules.capacity_wh if rules.capacity_wh is not None else -1
    pairs: list[tuple[tuple[int, int, bytes, int, bytes, int], tuple[int, int, bytes, int, bytes, int], int]] = []
    hashes = tuple(so.hash for so in book)  # dedupe sorts by hash
    fills: dict[bytes, int] = dict.fromkeys(hashes, 0)
    nb, ns = len(buy_rows), len(sell_rows)
    i = j = 0
    b_rest = buy_rows[0][3] if nb else 0
    s_rest = sell_rows[0][3] if ns else 0
    volume = 0
    while i < nb and j < ns:
        b, s = buy_rows[i], sell_rows[j]
        if b[5] < s[5]:
            break
        q = b_rest if b_rest < s_rest else s_rest
        if cap >= 0:
            q = min(q, cap - volume)
            if q <= 0:
                break
        pairs.append((b, s, q))
        volume += q
        fills[b[2]] += q
        fills[s[2]] += q
        b_rest -= q
        s_rest -= q
        if b_rest == 0:
            i += 1
            b_rest = buy_rows[i][3] if i < nb else 0
        if s_rest == 0:
            j += 1
            s_rest = sell_rows[j][3] if j < ns else 0

    clearing_price: int | None = None
    if pairs:
        mb, ms, _ = pairs[-1]
        clearing_price = (mb[5] + ms[5]) // 2
    bid = rules.pricing == PAY_AS_BID
    trades = []
    for b, s, q in pairs:
        p = (b[5] + s[5]) // 2 if bid else clearing_price
        assert p is not None
        trades.append(Trade(b[2], s[2], b[4], s[4], q, p, q * p // 1000, q * fee // 1000))
    encoded = encode_cleared(zone, interval_start, interval_s, rules, clearing_price, volume, hashes, trades)
    return ClearedInterval(zone, interval_start, interval_s, rules, clearing_price, volume, tuple(trades),
                           hashes, fills, encoded, hashlib.sha256(encoded).digest())


def encode_cleared(zone: str, interval_start: int, interval_s: int, rules: ZoneRules, price: int | None,
                   volume: int, hashes: Sequence[bytes], trades: Sequence[Trade]) -> bytes:
    return cbor2.dumps({
        0: FORMAT_VERSION, 1: zone, 2: interval_start, 3: interval_s,
        4: [rules.capacity_wh, rules.grid_fee_sat_per_kwh, rules.pricing],
        5: price, 6: volume, 7: list(hashes),
        8: [[t.buy, t.sell, t.wh, t.price_sat_per_kwh, t.sats, t.fee_sats] for t in trades],
    }, canonical=True)


def clear_book(orders: Iterable[SignedOrder], rules: Mapping[str, ZoneRules] | None = None,
               default_rules: ZoneRules = ZoneRules()) -> list[ClearedInterval]:
    """Clear every (zone, interval) present in `orders`, each with its
    zone's rules; results sorted by (zone, start, length)."""
    groups: dict[tuple[str, int, int], list[SignedOrder]] = {}
    for so in orders:
        o = so.order
        groups.setdefault((o.zone, o.interval_start, o.interval_s), []).append(so)
    rules = rules or {}
    return [clear_interval(groups[k], k[0], k[1], k[2], rules.get(k[0], default_rules)) for k in sorted(groups)]


def book_hash(cleared: Iterable[ClearedInterval]) -> bytes:
    """One hash over several cleared intervals (sorted by key)."""
    return hashlib.sha256(cbor2.dumps([c.hash for c in sorted(cleared, key=lambda c: c.key)],
                                      canonical=True)).digest()


# -- comparing with other coordinators -----------------------------------


@dataclass(frozen=True)
class Disagreement:
    peer: str
    their_hash: bytes
    # Filled when the peer's order list is known: what each side lacked.
    missing_here: tuple[bytes, ...] = ()  # orders (or hash prefixes) the peer cleared and we did not
    missing_there: tuple[bytes, ...] = ()  # orders we cleared and the peer did not


@dataclass(frozen=True)
class Comparison:
    key: tuple[str, int, int]
    our_hash: bytes
    agree: tuple[str, ...]
    disagree: tuple[Disagreement, ...]

    @property
    def unanimous(self) -> bool:
        return not self.disagree


def compare_books(ours: ClearedInterval, theirs: Mapping[str, bytes],
                  their_orders: Mapping[str, Sequence[bytes]] | None = None) -> Comparison:
    """Compare our cleared interval's hash with peers' (peer id -> hash);
    log each disagreement with, when `their_orders` gives a peer's order
    hashes, the orders one side had and the other lacked."""
    agree, disagree = [], []
    mine = set(ours.order_hashes)
    for peer in sorted(theirs):
        h = theirs[peer]
        if h == ours.hash:
            agree.append(peer)
            continue
        lacked_here: tuple[bytes, ...] = ()
        lacked_there: tuple[bytes, ...] = ()
        if their_orders is not None and peer in their_orders:
            # Peers may list hash prefixes (book.py publishes 8 bytes each).
            other = list(their_orders[peer])
            n = min((len(x) for x in other), default=32)
            mine_by_prefix = {x[:n]: x for x in mine}
            other_prefixes = {x[:n] for x in other}
            lacked_here = tuple(sorted(x for x in other_prefixes if x not in mine_by_prefix))
            lacked_there = tuple(sorted(x for p, x in mine_by_prefix.items() if p not in other_prefixes))
        d = Disagreement(peer, h, lacked_here, lacked_there)
        disagree.append(d)
        log.warning("cleared book %s/%d disagrees with peer %s: ours %s, theirs %s;"
                    " orders we lacked %d %s, orders they lacked %d %s",
                    ours.zone, ours.interval_start, peer, ours.hash.hex()[:16], h.hex()[:16],
                    len(lacked_here), [x.hex()[:16] for x in lacked_here[:5]],
                    len(lacked_there), [x.hex()[:16] for x in lacked_there[:5]])
    return Comparison(ours.key, ours.hash, tuple(agree), tuple(disagree))
