"""Deterministic clearing: a double auction per zone and interval.

Every coordinator runs this on the orders it collected for a zone and
interval; from the same set of orders every machine gets the same bytes
(`ClearedInterval.encoded`) and so the same `hash`, with no central
operator. Pure: no clock, no I/O, no floating point. docs/MARKET.md
explains the rules for neighbours, with worked examples.

The rules (the contract between coordinators; change them only with a new
FORMAT_VERSION):

1. Input. Orders for one (zone, interval start, interval length). An order
   appearing twice counts once; of two orders with one (owner, nonce) the
   lower hash is kept (orders.dedupe). Arrival order never matters. Orders
   below the zone's minimum order size (`min_order_wh`) are listed in the
   book but not matched.
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
   Under a binding feeder limit the scarce capacity goes by that same
   priority: the highest bids meet the lowest asks, the rest wait.
5. Price (pay-as-clear, the default): one uniform price for every trade,
   chosen on the aggregated supply and demand curves, not on the last
   matched pair. After the walk, with "accepted" the orders that got any
   Wh and "rejected" those with Wh left over (a partly filled order is
   both), the market-clearing interval is
       lo = max(highest accepted ask, highest rejected bid)
       hi = min(lowest accepted bid,  lowest rejected ask)
   (bids are effective limits; a side with no rejected order drops out of
   its max/min). Every price in [lo, hi] fills every order it suits: no
   rejected bid is above it, no rejected ask below it, and no accepted
   order is on the wrong side of it. lo and hi are adjacent limit prices
   of the matched book (no limit lies strictly between them), so one
   extra order of 1 Wh can only move the interval to a neighbouring gap:
   the price crosses at most one limit price of the book while the feeder
   does not bind (property-tested in tests/market/test_price_rule.py; a
   binding feeder is below). The price is floor((lo + hi) / 2).
   - Ties and the last partial order: an order whose limit equals the
     price is indifferent and may be left partly unfilled; among equal
     limits priority (rule 3) decides who fills. A partly filled order's
     limit is both an accepted and a rejected limit, so it bounds the
     interval from both sides: the price is its limit (the marginal order
     sets the price, as in every uniform-price auction).
   - Binding feeder limit (the walk stopped at the capacity while the next
     bid still met the next ask): the feeder acts as a vertical step in
     the supply curve. The price is set by demand for the scarce capacity:
         lo = max(highest accepted ask, highest rejected bid)
         hi = lowest accepted bid
     so it is at least what the best unserved buyer bid. One price for
     both sides: the congestion rent (price minus what the sellers' curve
     alone would have cleared at) goes to the sellers whose energy uses the
     feeder; the operator receives the grid fee only, and so gains nothing
     by declaring a smaller feeder. While the feeder binds, one extra
     order of 1 Wh moves the price by at most one gap of the bids and the
     delivering asks; one that makes the feeder bind moves it to the
     scarcity price, which may cross more of the book (docs/MARKET.md).
   - pay-as-bid: each trade at the midpoint of its own buyer's effective
     limit and seller's limit, rounded down. `price_sat_per_kwh` of the
     cleared interval still reports the uniform price as an indication.
6. Money, in millisatoshi, exact: a trade of W Wh at P sat/kWh is worth
   W * P msat (1 Wh at 1 sat/kWh is 1 msat), and its grid fee W * F msat.
   Amounts are summed per buyer-seller pair (energy) and per buyer (grid
   fee) over the interval and rounded once, up to whole satoshis
   (`sats_of`): the payee is never paid less than the exact amount, so no
   seller is paid below its limit for what it delivered, and splitting an
   order into many small ones changes nothing (64 orders of 6 Wh pay what
   one of 384 Wh pays). The payer pays less than 1 sat more than exact per
   pair and interval. Minimum order size: `min_order_wh`, 1 Wh unless the
   zone sets more; since rounding is per pair, not per order, small orders
   gain nothing, and the minimum only bounds the book's size.

Encoding of a cleared interval (canonical CBOR map, integer labels):

    0 v        2
    1 zone     text
    2 start    uint  interval start
    3 length   uint  interval length, s
    4 rules    [capacity_wh or null, grid_fee_sat_per_kwh, pricing, min_order_wh]
    5 price    uint or null  uniform clearing price, null if no trade
    6 volume   uint  Wh traded
    7 orders   bytes  the hashes of the orders cleared, 32 bytes each, in
               priority order (rule 3): buys, then sells
    8 trades   bytes  five columns of big-endian uint64, one after the
               other, each with one entry per trade in matching order:
               buy order index, sell order index (into 7), Wh, price,
               msat (the fee is Wh * the rules' grid fee)
    9 pairs    [[buyer key, seller key, wh, msat, sats]] sorted by keys:
               what each buyer owes each seller if all is delivered
   10 binding  bool  the feeder limit decided the volume and the price
   11 network  bytes  only with network limits: their digest (GridLimits)

Network limits (ZoneRules.network, a coordinator/grid GridLimits): the
walk and price of coordinator/grid/walk.py replace rule 4's walk and rule
5's price; where the network cuts nothing they give the same trades and
price. Without network limits nothing here changes (docs/GRID.md).

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
- In a thin book a seller (or buyer) can be its own marginal order: 999 Wh
  at its price and 1 Wh at the buyer's limit makes that 1 Wh the price
  setter. No uniform price that fills every order it suits can prevent
  it; what bounds the gain is the next limit in the book (rule 5), so it
  shrinks as the book fills.
- Which orders a coordinator saw by gate closure depends on its clock and
  the overlay; that is what the hash exchange detects, not prevents.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import sys
from array import array
from dataclasses import dataclass, field
from itertools import repeat
from operator import add, and_, attrgetter, lshift, mul, or_, rshift
from typing import Iterable, Iterator, Mapping, NamedTuple, Sequence

import cbor2

from ..grid.limits import GridLimits
from .orders import DEFAULT_INTERVAL_S, SignedOrder, dedupe

log = logging.getLogger("microgrid.market.clearing")

FORMAT_VERSION = 2
PAY_AS_CLEAR = "pay-as-clear"
PAY_AS_BID = "pay-as-bid"
PRICING = (PAY_AS_CLEAR, PAY_AS_BID)
DEFAULT_MIN_ORDER_WH = 1


class ClearingError(ValueError):
    """Orders or rules that cannot be cleared together."""


@dataclass(frozen=True)
class ZoneRules:
    """What a zone's coordinators agree on (from config)."""

    capacity_wh: int | None = None  # feeder limit per interval; None = unlimited
    grid_fee_sat_per_kwh: int = 0
    pricing: str = PAY_AS_CLEAR
    min_order_wh: int = DEFAULT_MIN_ORDER_WH  # smaller orders are listed, never matched
    network: GridLimits | None = None  # the feeder's limits as integers (coordinator/grid); None: not enforced

    def __post_init__(self) -> None:
        cap = self.capacity_wh
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise ClearingError(f"capacity_wh={cap!r}: expected None or an integer >= 0")
        fee = self.grid_fee_sat_per_kwh
        if isinstance(fee, bool) or not isinstance(fee, int) or fee < 0:
            raise ClearingError(f"grid_fee_sat_per_kwh={fee!r}: expected an integer >= 0")
        if self.pricing not in PRICING:
            raise ClearingError(f"pricing={self.pricing!r}: expected one of {PRICING}")
        m = self.min_order_wh
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ClearingError(f"min_order_wh={m!r}: expected an integer >= 1")
        if self.network is not None and not isinstance(self.network, GridLimits):
            raise ClearingError(f"network={type(self.network).__name__}: expected GridLimits or None")


class Trade(NamedTuple):
    buy: bytes  # buy order hash
    sell: bytes  # sell order hash
    buyer: bytes  # owner public keys
    seller: bytes
    wh: int
    price_sat_per_kwh: int
    msat: int  # buyer -> seller, exact: wh * price
    fee_msat: int  # buyer -> zone operator, exact: wh * grid fee


class PairAmount(NamedTuple):
    """What one buyer owes one seller for the interval, all delivered."""

    buyer: bytes
    seller: bytes
    wh: int
    msat: int
    sats: int  # sats_of(msat): rounded once


@dataclass(frozen=True)
class ClearedInterval:
    zone: str
    interval_start: int
    interval_s: int
    rules: ZoneRules
    price_sat_per_kwh: int | None
    volume_wh: int
    trades: Sequence[Trade]  # a tuple, or Trades (the same, built on first use)
    order_hashes: tuple[bytes, ...]
    fills: Mapping[bytes, int] = field(compare=False, hash=False)  # order hash -> Wh filled (Fills: 0 if none)
    encoded: bytes = field(compare=False, hash=False, default=b"")
    hash: bytes = b""
    pairs: tuple[PairAmount, ...] = ()
    binding: bool = False  # the feeder limit decided volume and price

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.zone, self.interval_start, self.interval_s)


def sats_of(msat: int) -> int:
    """Millisatoshi to whole satoshis, rounded up (in the payee's favour):
    applied once per buyer-seller pair (or buyer-operator) per interval."""
    return -(-msat // 1000)


def trade_msat(wh: int, price_sat_per_kwh: int) -> int:
    """The exact value of `wh` at `price_sat_per_kwh`, in millisatoshi."""
    return wh * price_sat_per_kwh


def trade_value(wh: int, price_sat_per_kwh: int) -> int:
    """floor(wh * price / 1000) sats: what a part of a pair's amount is
    worth at most, for paying ahead of settlement (trading/delivery.py)."""
    return wh * price_sat_per_kwh // 1000


def uniform_price(acc_ask: int, rej_bid: int | None, acc_bid: int, rej_ask: int | None,
                  binding: bool) -> int:
    """Rule 5: the midpoint (rounded down) of the market-clearing interval,
    from the highest accepted ask, highest rejected bid, lowest accepted
    bid and lowest rejected ask (None: no such order)."""
    lo = acc_ask if rej_bid is None or rej_bid < acc_ask else rej_bid
    hi = acc_bid if binding or rej_ask is None or rej_ask > acc_bid else rej_ask
    return (lo + hi) // 2


# Speed. Clearing works on columns: SignedOrder.row holds what it reads
# (CLEARING_ROW), one C-level pass fetches the rows and zip(*) turns them
# into columns, and the priority sort is a plain sort of fresh integers
# (priority << bits | position), so per-order Python work is limited to
# the matching walk. That is what keeps 100,000 orders within
# bench_market's budget. The priority integer packs rule 3: side (buys
# first), price part (27 bits: MAX_PRICE - limit for a buy, limit for a
# sell), created (41 bits), the order hash's first 4 bytes; should two
# orders share all of it, the full hashes decide (`_exact_order`).
CLEARING_ROW = ("hash", "book", "is_buy", "limit_sat_per_kwh", "quantity_wh", "owner", "owner_nonce", "priority")
_hash = attrgetter("hash")
_row = attrgetter("row")


class Trades(Sequence[Trade]):
    """A cleared interval's trades, in matching order: a tuple of Trade
    built on first use from the clearing's columns. Hashing, publishing
    and comparing a cleared book never need 70,000 Trade objects;
    settlement, which does, builds them once (bench_market measures both)."""

    def __init__(self, hashes: Sequence[bytes], buyers: list[bytes], sellers: list[bytes], mb: list[int],
                 ms: list[int], mq: list[int], prices: list[int], msats: list[int], fee: int) -> None:
        self._src: tuple | None = (hashes, buyers, sellers, mb, ms, mq, prices, msats, fee)
        self._len = len(mq)
        self._t: tuple[Trade, ...] = ()

    def _built(self) -> tuple[Trade, ...]:
        if self._src is not None:
            hashes, buyers, sellers, mb, ms, mq, prices, msats, fee = self._src
            self._t = tuple(map(tuple.__new__, repeat(Trade), zip(
                map(hashes.__getitem__, mb), map(hashes.__getitem__, ms), buyers, sellers, mq, prices, msats,
                map(mul, mq, repeat(fee)))))
            self._src = None
        return self._t

    def __getitem__(self, k):  # type: ignore[no-untyped-def, override]
        return self._built()[k]

    def __iter__(self) -> Iterator[Trade]:
        return iter(self._built())

    def __len__(self) -> int:
        return self._len

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Trades, tuple)):
            return self._built() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._built())

    def __repr__(self) -> str:
        return repr(self._built())


class Fills(Mapping[bytes, int]):
    """Order hash -> Wh filled (0 for an order that got nothing), worked
    out on first use from where the matching walk stopped: every order
    before its position on each side filled whole, the one at it by what
    it took. Most callers never ask, so clearing does not build it."""

    def __init__(self, hashes: Sequence[bytes], qty: Sequence[int],
                 sides: Sequence[tuple[Sequence[int], int, int]]) -> None:
        self._src: tuple | None = (hashes, qty, sides)
        self._d: dict[bytes, int] = {}

    def _built(self) -> dict[bytes, int]:
        if self._src is not None:
            hashes, qty, sides = self._src
            d = self._d
            for order, pos, rest in sides:
                done = order[:pos]
                d.update(zip(map(hashes.__getitem__, done), map(qty.__getitem__, done)))
                if pos < len(order) and qty[order[pos]] > rest:
                    d[hashes[order[pos]]] = qty[order[pos]] - rest
            self._src = None
        return self._d

    def __getitem__(self, key: bytes) -> int:
        return self._built().get(key, 0)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())


def clear_interval(orders: Iterable[SignedOrder], zone: str, interval_start: int,
                   interval_s: int = DEFAULT_INTERVAL_S, rules: ZoneRules = ZoneRules()) -> ClearedInterval:
    """Clear one zone's interval. Raises ClearingError for an order of
    another zone or interval."""
    # The cyclic garbage collector would walk every order and trade object
    # many times over while the columns and trades are built (nothing here
    # makes a cycle): pause it, as bulk loaders do.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _clear(orders, zone, interval_start, interval_s, rules)
    finally:
        if was_enabled:
            gc.enable()


def _clear(orders: Iterable[SignedOrder], zone: str, interval_start: int, interval_s: int,
           rules: ZoneRules) -> ClearedInterval:
    book = list(orders)
    n = len(book)
    cols = list(zip(*map(_row, book))) if n else [()] * len(CLEARING_ROW)
    if len(set(cols[6])) != n:
        book = dedupe(book)  # a repeated order, or two sharing an (owner, nonce): rule 1's slow path
        n = len(book)
        cols = list(zip(*map(_row, book))) if n else [()] * len(CLEARING_ROW)
    hashes, books, is_buy, limits, qty, owners, _, priority = cols
    want = f"{zone}/{interval_start}+{interval_s}"
    if n and set(books) != {want}:
        k = next(k for k in range(n) if books[k] != want)
        raise ClearingError(f"order {hashes[k].hex()[:16]} for {books[k]}s: expected {want}s")
    fee = rules.grid_fee_sat_per_kwh
    # Rule 3: sort positions by priority; buys come first.
    bits = max(n.bit_length(), 1)
    tagged = list(map(or_, map(lshift, priority, repeat(bits)), range(n)))
    tagged.sort()
    perm = list(map(and_, tagged, repeat((1 << bits) - 1)))
    if len(set(map(rshift, tagged, repeat(bits)))) != n:
        perm = _exact_order(perm, priority, hashes)
    nbuy = sum(is_buy)
    small = rules.min_order_wh
    buys = perm[:nbuy] if small <= 1 else [k for k in perm[:nbuy] if qty[k] >= small]
    sells = perm[nbuy:] if small <= 1 else [k for k in perm[nbuy:] if qty[k] >= small]

    cap = rules.capacity_wh if rules.capacity_wh is not None else 1 << 62  # no limit: more than all orders
    mb: list[int]  # the walk's trades as columns: buy index, sell index, Wh
    ms: list[int]
    mq: list[int]
    clearing_price: int | None
    fills: Mapping[bytes, int]
    if rules.network is not None:
        # The network-aware walk and price (coordinator/grid/walk.py).
        from ..grid.walk import network_clearing
        w = network_clearing(hashes, buys, sells, limits, qty, owners, fee, cap, rules.network, interval_s,
                             rules.pricing)
        mb, ms, mq, prices, volume, clearing_price, binding, fills = w[:8]
    else:
        mb, ms, mq = [], [], []
        add_b, add_s, add_q = mb.append, ms.append, mq.append
        nb, ns = len(buys), len(sells)
        i = j = 0
        b_rest = qty[buys[0]] if nb else 0
        s_rest = qty[sells[0]] if ns else 0
        volume = 0
        while i < nb and j < ns:
            bk, sk = buys[i], sells[j]
            if limits[bk] - fee < limits[sk]:
                break
            q = b_rest if b_rest < s_rest else s_rest
            if q > cap - volume:
                q = cap - volume
                if q <= 0:
                    break
            add_b(bk)
            add_s(sk)
            add_q(q)
            volume += q
            b_rest -= q
            s_rest -= q
            if b_rest == 0:
                i += 1
                b_rest = qty[buys[i]] if i < nb else 0
            if s_rest == 0:
                j += 1
                s_rest = qty[sells[j]] if j < ns else 0

        clearing_price = None
        binding = False
        if mq:
            rej_bid = limits[buys[i]] - fee if i < nb else None
            rej_ask = limits[sells[j]] if j < ns else None
            binding = volume == cap and rej_bid is not None and rej_ask is not None and rej_bid >= rej_ask
            clearing_price = uniform_price(limits[ms[-1]], rej_bid, limits[mb[-1]] - fee, rej_ask, binding)
        if rules.pricing == PAY_AS_BID:
            prices = [(limits[b] - fee + limits[s]) // 2 for b, s in zip(mb, ms)]
        else:
            prices = [clearing_price or 0] * len(mq)
        fills = Fills(hashes, qty, ((buys, i, b_rest), (sells, j, s_rest)))
    msats = list(map(mul, mq, prices))
    buyers = list(map(owners.__getitem__, mb))
    sellers = list(map(owners.__getitem__, ms))
    trades = Trades(hashes, buyers, sellers, mb, ms, mq, prices, msats, fee)
    # Money per buyer-seller pair (rule 6): owners as small integers make
    # one int key per trade.
    ids = {o: k for k, o in enumerate(sorted(set(buyers) | set(sellers)))}
    keys = list(map(add, map(mul, map(ids.__getitem__, buyers), repeat(len(ids))), map(ids.__getitem__, sellers)))
    pair_wh: dict[int, int] = {}
    get = pair_wh.get
    for k, q in zip(keys, mq):
        pair_wh[k] = get(k, 0) + q
    if rules.pricing == PAY_AS_BID:
        pair_msat: dict[int, int] = {}
        get = pair_msat.get
        for k, m in zip(keys, msats):
            pair_msat[k] = get(k, 0) + m
    else:
        pair_msat = {k: w * (clearing_price or 0) for k, w in pair_wh.items()}
    who = sorted(ids)
    m = len(ids)
    pairs = tuple(PairAmount(who[k // m], who[k % m], pair_wh[k], pair_msat[k], sats_of(pair_msat[k]))
                  for k in sorted(pair_wh))
    # The book is listed in priority order (canonical: rule 3 is total);
    # trades name orders by their place in that list.
    rank = dict(zip(perm, range(n))) if mb else {}
    listed = tuple(map(hashes.__getitem__, perm))
    encoded = encode_cleared(zone, interval_start, interval_s, rules, clearing_price, volume, listed,
                             (list(map(rank.__getitem__, mb)), list(map(rank.__getitem__, ms)), mq, prices, msats),
                             pairs, binding, rules.network.digest if rules.network is not None else None)
    return ClearedInterval(zone, interval_start, interval_s, rules, clearing_price, volume, trades,
                           listed, fills, encoded, hashlib.sha256(encoded).digest(), pairs, binding)


def _exact_order(perm: list[int], priority: Sequence[int], hashes: Sequence[bytes]) -> list[int]:
    """Rule 3 when two orders share a priority integer (equal side, price,
    created and first 4 hash bytes): the full hash decides."""
    return sorted(perm, key=lambda k: (priority[k], hashes[k]))


def encode_cleared(zone: str, interval_start: int, interval_s: int, rules: ZoneRules, price: int | None,
                   volume: int, hashes: Sequence[bytes], columns: Sequence[Sequence[int]],
                   pairs: Sequence[PairAmount] = (), binding: bool = False, network: bytes | None = None) -> bytes:
    """The canonical bytes of a cleared interval (see the module docstring).
    `columns` are the trades as (buy index, sell index, Wh, price, msat),
    indices into `hashes`; the fee follows from the rules."""
    flat = array("Q")
    for column in columns:
        flat.extend(column)
    if sys.byteorder == "little":
        flat.byteswap()
    body = {
        0: FORMAT_VERSION, 1: zone, 2: interval_start, 3: interval_s,
        4: [rules.capacity_wh, rules.grid_fee_sat_per_kwh, rules.pricing, rules.min_order_wh],
        5: price, 6: volume, 7: b"".join(hashes), 8: flat.tobytes(),
        9: [list(p) for p in pairs], 10: binding,
    }
    if network is not None:
        body[11] = network
    return cbor2.dumps(body, canonical=True)


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
