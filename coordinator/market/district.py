"""A district of feeder zones: each zone clears its own book, the district
clears what the zones have left over. Pure: no clock, no I/O, no floating
point (the overlay side is district_link.py).

One zone of 10,000 households is too big for one book (every coordinator
would fetch 10,000 orders and meter totals each interval), so a district is
split into feeder zones of a few hundred to a thousand households. The
levels and what crosses between them:

1. Feeder zone (unchanged): its coordinators collect the zone's orders
   (`mg/market/<zone>/<start>`), clear them (clearing.clear_interval) and
   settle the zone's meter totals (`mg/metering/<zone>/<start>`). Nothing
   of another zone is fetched.
2. Upward, one record per zone and interval: a ZoneOffer, the zone's
   residual supply and demand after its own clearing (each order's unfilled
   Wh, aggregated per limit price; buyers at their effective limit, limit
   minus the zone's grid fee) and what the zone's connection to the
   district can carry out (`export_cap_wh`) and in (`import_cap_wh`) in the
   interval, with the hash of the zone's cleared book. It is computed from
   the cleared book alone, so every honest coordinator of a zone publishes
   the same bytes (`zone_offer`). Published under
   `mg/district/<district>/<start>`, slot `zone:<zone>`.
3. District: every coordinator reads that one key (a record per zone and
   coordinator: tens of small records, never another zone's orders), takes
   per zone the offer most of its coordinators published (`choose_offers`)
   and clears them (`clear_district`): bids by price, highest first, asks by
   price, lowest first (ties: zone name), each bid walking the asks it meets;
   no zone trades with itself (its own residuals did not cross in its book,
   or its feeder limit stopped them), and no zone's net export or import
   exceeds its connection's capacity. Each matched pair trades at the
   midpoint of its two prices (pay-as-bid between zones: with zones skipped
   no single price suits every pair).
4. Down: no further record. Each zone's coordinators allocate the lots its
   zone sold and bought (`DistrictResult.lots`) to its residual orders in
   the zone's own priority order (clearing.py rule 3), `allocate`: an ask is
   only given lots at or above its limit, a bid only at or below its
   effective limit. The district result's hash (`DistrictResult.hash`)
   can be published and compared like a zone's cleared book.

Offers are bounded (MAX_STEPS price steps per side): when a zone's
residual orders have more distinct prices, neighbouring prices are merged
into one step at the least favourable price of the group (an ask step at
its highest limit, a bid step at its lowest), so no order is ever filled at
a price it did not accept; merging only costs volume at the margin.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import cbor2

from .clearing import ClearedInterval
from .orders import BUY, SELL, ZONE_RE, SignedOrder

FORMAT_VERSION = 1
# Price steps per side of an offer: 64 steps of two small integers keep an
# offer's CBOR under 1 KB, inside an overlay record body (1,536 bytes).
MAX_STEPS = 64
MAX_ZONES = 256
MAX_WH = 1 << 40
MAX_PRICE = 1 << 27  # orders.MAX_PRICE_SAT_PER_KWH fits below this


class DistrictError(ValueError):
    """An offer or a district that cannot be read or cleared."""


@dataclass(frozen=True)
class ZoneOffer:
    """What a feeder zone offers the district for one interval."""

    zone: str
    interval_start: int
    interval_s: int
    book_hash: bytes  # the zone's cleared book (ClearedInterval.hash)
    asks: tuple[tuple[int, int], ...]  # (limit sat/kWh, Wh), prices ascending
    bids: tuple[tuple[int, int], ...]  # (effective limit sat/kWh, Wh), prices descending
    export_cap_wh: int
    import_cap_wh: int

    def encode(self) -> bytes:
        return bytes(cbor2.dumps({
            "v": FORMAT_VERSION, "zone": self.zone, "start": self.interval_start, "len": self.interval_s,
            "book": self.book_hash, "asks": [list(s) for s in self.asks], "bids": [list(s) for s in self.bids],
            "exp": self.export_cap_wh, "imp": self.import_cap_wh}, canonical=True))


@dataclass(frozen=True)
class DistrictTrade:
    seller_zone: str
    buyer_zone: str
    wh: int
    price_sat_per_kwh: int


@dataclass(frozen=True)
class DistrictResult:
    district: str
    interval_start: int
    interval_s: int
    trades: tuple[DistrictTrade, ...]
    books: tuple[tuple[str, bytes], ...]  # (zone, book hash) of every offer cleared, by zone
    encoded: bytes
    hash: bytes

    @property
    def volume_wh(self) -> int:
        return sum(t.wh for t in self.trades)

    def lots(self, zone: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(sold, bought) by `zone`: (price, Wh) lots, sold lots by price
        ascending, bought lots descending (the order `allocate` fills)."""
        sold = sorted((t.price_sat_per_kwh, t.wh) for t in self.trades if t.seller_zone == zone)
        bought = sorted(((t.price_sat_per_kwh, t.wh) for t in self.trades if t.buyer_zone == zone), reverse=True)
        return sold, bought

    def net_wh(self, zone: str) -> int:
        """Energy `zone` exports to the district (negative: imports)."""
        return (sum(t.wh for t in self.trades if t.seller_zone == zone)
                - sum(t.wh for t in self.trades if t.buyer_zone == zone))


# -- level 1 -> 2: a zone's offer -------------------------------------------------------


def residuals(orders: Iterable[SignedOrder], cleared: ClearedInterval) -> list[tuple[SignedOrder, int]]:
    """Each matchable order of the zone's book with Wh left after its own
    clearing, in the zone's priority order (rule 3: buyers first)."""
    small = cleared.rules.min_order_wh
    fee = cleared.rules.grid_fee_sat_per_kwh
    listed = set(cleared.order_hashes)
    out = []
    for so in sorted(orders, key=lambda s: (s.row[7], s.hash)):
        if so.hash not in listed or so.order.quantity_wh < small:
            continue
        if so.side == BUY and so.order.limit_sat_per_kwh < fee:
            continue  # rule 2: cannot trade at all
        rest = so.order.quantity_wh - cleared.fills.get(so.hash, 0)
        if rest > 0:
            out.append((so, rest))
    return out


def _merge(steps: list[tuple[int, int]], worst: Any, max_steps: int) -> tuple[tuple[int, int], ...]:
    """At most `max_steps` steps: consecutive groups of equal size (the
    first groups one larger), each at its least favourable price `worst`."""
    if len(steps) <= max_steps:
        return tuple(steps)
    size, extra = divmod(len(steps), max_steps)
    out, i = [], 0
    for g in range(max_steps):
        n = size + (1 if g < extra else 0)
        group = steps[i:i + n]
        i += n
        out.append((worst(p for p, _ in group), sum(w for _, w in group)))
    return tuple(out)


def zone_offer(orders: Iterable[SignedOrder], cleared: ClearedInterval,
               export_cap_wh: int | None = None, import_cap_wh: int | None = None,
               max_steps: int = MAX_STEPS) -> ZoneOffer:
    """The offer a zone publishes upward, from its book and its clearing.
    Caps: what the zone's connection to the district carries per interval
    (None: unlimited). `max_steps` (1..MAX_STEPS, the same for every
    coordinator of the district): fewer steps, smaller records, coarser
    curves."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 1 <= max_steps <= MAX_STEPS:
        raise DistrictError(f"max_steps={max_steps!r}: expected an integer in 1..{MAX_STEPS}")
    fee = cleared.rules.grid_fee_sat_per_kwh
    asks: dict[int, int] = {}
    bids: dict[int, int] = {}
    for so, rest in residuals(orders, cleared):
        if so.side == BUY:
            p = so.order.limit_sat_per_kwh - fee
            bids[p] = bids.get(p, 0) + rest
        else:
            p = so.order.limit_sat_per_kwh
            asks[p] = asks.get(p, 0) + rest
    return ZoneOffer(cleared.zone, cleared.interval_start, cleared.interval_s, cleared.hash,
                     _merge(sorted(asks.items()), max, max_steps), _merge(sorted(bids.items(), reverse=True), min, max_steps),
                     MAX_WH if export_cap_wh is None else export_cap_wh,
                     MAX_WH if import_cap_wh is None else import_cap_wh)


def _int(m: Mapping[str, Any], name: str, hi: int) -> int:
    v = m.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
        raise DistrictError(f"{name}={v!r}: expected an integer in 0..{hi}")
    return v


def _steps(raw: Any, name: str, descending: bool) -> tuple[tuple[int, int], ...]:
    if not isinstance(raw, list) or len(raw) > MAX_STEPS:
        raise DistrictError(f"{name}: expected a list of at most {MAX_STEPS} [price, Wh] steps")
    out = []
    for s in raw:
        if (not isinstance(s, list) or len(s) != 2 or any(isinstance(x, bool) or not isinstance(x, int) for x in s)
                or not 0 <= s[0] < MAX_PRICE or not 0 < s[1] <= MAX_WH):
            raise DistrictError(f"{name}: step {s!r} is not [price 0..{MAX_PRICE - 1}, Wh 1..{MAX_WH}]")
        out.append((s[0], s[1]))
    prices = [p for p, _ in out]
    if prices != sorted(set(prices), reverse=descending):
        raise DistrictError(f"{name}: prices must be distinct and {'descending' if descending else 'ascending'}")
    return tuple(out)


def decode_offer(data: bytes) -> ZoneOffer:
    """An offer read from the overlay (anyone's bytes): the offer, or
    DistrictError naming what is wrong. Only the canonical encoding is
    accepted, so equal offers are equal bytes."""
    try:
        m = cbor2.loads(data)
    except Exception as e:
        raise DistrictError(f"offer is not CBOR: {e}") from None
    if not isinstance(m, dict) or m.get("v") != FORMAT_VERSION:
        raise DistrictError(f"offer: expected a map with v={FORMAT_VERSION}")
    zone = m.get("zone")
    if not isinstance(zone, str) or not ZONE_RE.match(zone):
        raise DistrictError(f"offer zone {zone!r}: expected a zone name")
    book = m.get("book")
    if not isinstance(book, bytes) or len(book) != 32:
        raise DistrictError("offer book: expected a 32-byte hash")
    offer = ZoneOffer(zone, _int(m, "start", 1 << 40), _int(m, "len", 86400), book,
                      _steps(m.get("asks"), "asks", False), _steps(m.get("bids"), "bids", True),
                      _int(m, "exp", MAX_WH), _int(m, "imp", MAX_WH))
    if offer.encode() != bytes(data):
        raise DistrictError("offer is not canonically encoded (or carries unknown fields)")
    return offer


def choose_offers(published: Iterable[tuple[str, ZoneOffer]]) -> dict[str, ZoneOffer]:
    """One offer per zone from (publisher zone, offer) pairs read from the
    overlay: an offer counts only for the zone its publisher belongs to;
    per zone the offer most of its coordinators published (ties: the lower
    encoding's hash), so one faulty coordinator cannot change its zone's
    offer while the others agree."""
    votes: dict[str, dict[bytes, int]] = {}
    by_bytes: dict[bytes, ZoneOffer] = {}
    for zone, offer in published:
        if offer.zone != zone:
            continue
        enc = offer.encode()
        by_bytes[enc] = offer
        votes.setdefault(zone, {})
        votes[zone][enc] = votes[zone].get(enc, 0) + 1
    return {z: by_bytes[min(v, key=lambda e: (-v[e], hashlib.sha256(e).digest()))] for z, v in votes.items()}


# -- level 2: the district's clearing ------------------------------------------------


def clear_district(offers: Iterable[ZoneOffer], district: str, interval_start: int,
                   interval_s: int) -> DistrictResult:
    """Clear the zones' offers for one interval (rules in the module doc).
    Deterministic: the same offers in any order give the same bytes."""
    chosen: dict[str, ZoneOffer] = {}
    for o in offers:
        if (o.interval_start, o.interval_s) != (interval_start, interval_s):
            raise DistrictError(f"offer of {o.zone} for {o.interval_start}+{o.interval_s}: "
                                f"expected {interval_start}+{interval_s}")
        if o.zone in chosen:
            raise DistrictError(f"two offers of zone {o.zone}: choose one first (choose_offers)")
        chosen[o.zone] = o
    if len(chosen) > MAX_ZONES:
        raise DistrictError(f"{len(chosen)} zones: at most {MAX_ZONES} per district")
    bids = sorted(((-p, z, w) for z, o in chosen.items() for p, w in o.bids))
    asks = sorted(((p, z, w) for z, o in chosen.items() for p, w in o.asks))
    ask_rest = [w for _, _, w in asks]
    exp_left = {z: o.export_cap_wh for z, o in chosen.items()}
    imp_left = {z: o.import_cap_wh for z, o in chosen.items()}
    trades: dict[tuple[str, str, int], int] = {}
    for neg_bid, bz, bw in bids:
        bid = -neg_bid
        rest = bw
        for k, (ask, az, _w) in enumerate(asks):
            if ask > bid or rest == 0 or imp_left[bz] == 0:
                break
            if az == bz or ask_rest[k] == 0 or exp_left[az] == 0:
                continue
            q = min(rest, ask_rest[k], exp_left[az], imp_left[bz])
            rest -= q
            ask_rest[k] -= q
            exp_left[az] -= q
            imp_left[bz] -= q
            price = (bid + ask) // 2
            trades[(az, bz, price)] = trades.get((az, bz, price), 0) + q
    listed = tuple(sorted(trades.items()))
    books = tuple(sorted((z, o.book_hash) for z, o in chosen.items()))
    encoded = bytes(cbor2.dumps({
        "v": FORMAT_VERSION, "district": district, "start": interval_start, "len": interval_s,
        "books": [[z, h] for z, h in books],
        "trades": [[s, b, p, w] for (s, b, p), w in listed]}, canonical=True))
    return DistrictResult(district, interval_start, interval_s,
                          tuple(DistrictTrade(s, b, w, p) for (s, b, p), w in listed), books, encoded,
                          hashlib.sha256(encoded).digest())


# -- level 2 -> 1: the zone's share ------------------------------------------------------


@dataclass(frozen=True)
class Allocation:
    """Energy an order of the zone trades through the district, in lots of
    (price sat/kWh, Wh)."""

    order_hash: bytes
    owner: bytes
    side: str
    lots: tuple[tuple[int, int], ...]

    @property
    def wh(self) -> int:
        return sum(w for _, w in self.lots)

    @property
    def msat(self) -> int:
        """Exact value at the lots' prices (Wh x sat/kWh = msat)."""
        return sum(w * p for p, w in self.lots)


def allocate(result: DistrictResult, zone: str, orders: Iterable[SignedOrder],
             cleared: ClearedInterval) -> list[Allocation]:
    """The lots `zone` sold and bought in the district, given to its
    residual orders in the zone's priority order. Raises DistrictError when
    the lots do not fit the zone's residuals (the offer cleared was not the
    one this book gives)."""
    cleared_books = dict(result.books)
    if zone not in cleared_books:
        return []  # the zone took no part in the district's clearing
    sold, bought = result.lots(zone)
    return allocate_lots(ZoneLots(zone, cleared_books[zone], tuple(sold), tuple(bought)), orders, cleared)


@dataclass(frozen=True)
class ZoneLots:
    """What the district's clearing gives one zone: the book hash it
    cleared for the zone (in a result slice its first BOOK_PREFIX_BYTES
    bytes), and the lots (price, Wh) the zone sold (prices ascending) and
    bought (descending)."""

    zone: str
    book_hash: bytes
    sold: tuple[tuple[int, int], ...]
    bought: tuple[tuple[int, int], ...]


def allocate_lots(lots_in: ZoneLots, orders: Iterable[SignedOrder], cleared: ClearedInterval) -> list[Allocation]:
    """`allocate` from a zone's lots (e.g. read from a result slice)."""
    zone = lots_in.zone
    if len(lots_in.book_hash) < BOOK_PREFIX_BYTES or lots_in.book_hash != cleared.hash[:len(lots_in.book_hash)]:
        raise DistrictError(f"the district cleared another book of {zone} than {cleared.hash_hex[:16]}")
    fee = cleared.rules.grid_fee_sat_per_kwh
    res = residuals(orders, cleared)
    sold, bought = list(lots_in.sold), list(lots_in.bought)
    out: dict[bytes, list[tuple[int, int]]] = {}
    for lots, side in ((sold, SELL), (bought, BUY)):
        queue = [(so, rest) for so, rest in res if (so.side == BUY) == (side == BUY)]
        rests = [rest for _, rest in queue]
        for price, wh in lots:
            left = wh
            for k, (so, _) in enumerate(queue):
                limit = so.order.limit_sat_per_kwh - fee if side == BUY else so.order.limit_sat_per_kwh
                if side == BUY and limit < price:
                    break  # bids descend: no later bid accepts this price
                if side != BUY and limit > price:
                    break  # asks ascend
                if rests[k] == 0:
                    continue
                q = min(rests[k], left)
                rests[k] -= q
                left -= q
                out.setdefault(so.hash, []).append((price, q))
                if left == 0:
                    break
            if left:
                raise DistrictError(f"{zone}: {left} Wh of a {side} lot at {price} find no order accepting it")
    by_hash = {so.hash: so for so, _ in res}
    return [Allocation(h, by_hash[h].owner, by_hash[h].side, tuple(lots)) for h, lots in sorted(out.items())]


def check_offer(offer: ZoneOffer, ours: ZoneOffer) -> Sequence[str]:
    """Differences between a zone's chosen offer and the one this
    coordinator computed from its own book (empty: they agree)."""
    diffs = []
    for name in ("book_hash", "asks", "bids", "export_cap_wh", "import_cap_wh"):
        if getattr(offer, name) != getattr(ours, name):
            diffs.append(name)
    return diffs


# -- results back down: slices per district shard ------------------------------------------


# A slice names each zone's cleared book by the first 8 bytes of its hash:
# enough for a zone to tell its own book from another (forging a book
# whose hash shares them is 2^64 work), and 24 bytes less per zone in a
# record every coordinator of the district reads from 16 storing nodes.
BOOK_PREFIX_BYTES = 8


def result_lots(result: DistrictResult, zones: Iterable[str]) -> dict[str, ZoneLots]:
    """The lots of each of `zones` that `result` cleared."""
    books = dict(result.books)
    out = {}
    for z in set(zones) & set(books):
        sold, bought = result.lots(z)
        out[z] = ZoneLots(z, books[z], tuple(sold), tuple(bought))
    return out


def encode_slice(result: DistrictResult, zones: Iterable[str]) -> bytes:
    """The part of `result` that `zones` need, as one record body: the
    whole result's hash (readers compare it across clearers) and per zone
    its cleared book hash's first BOOK_PREFIX_BYTES and lots."""
    return encode_lots(result.hash, result.interval_start, result.interval_s, result_lots(result, zones))


def encode_lots(result_hash: bytes, interval_start: int, interval_s: int, lots: Mapping[str, ZoneLots]) -> bytes:
    """A slice's body from zones' lots (encode_slice; shards.zone_lots)."""
    m = {z: [zl.book_hash[:BOOK_PREFIX_BYTES], [list(x) for x in zl.sold], [list(x) for x in zl.bought]]
         for z, zl in sorted(lots.items())}
    return bytes(cbor2.dumps({"v": FORMAT_VERSION, "start": interval_start, "len": interval_s,
                              "hash": result_hash, "zones": m}, canonical=True))


def decode_slice(data: bytes) -> tuple[bytes, int, dict[str, ZoneLots]]:
    """(result hash, interval start, lots per zone) of a slice read from the
    overlay (anyone's bytes), or DistrictError."""
    try:
        m = cbor2.loads(data)
    except Exception as e:
        raise DistrictError(f"result slice is not CBOR: {e}") from None
    if not isinstance(m, dict) or m.get("v") != FORMAT_VERSION or not isinstance(m.get("zones"), dict):
        raise DistrictError(f"result slice: expected a map with v={FORMAT_VERSION} and zones")
    h = m.get("hash")
    if not isinstance(h, bytes) or len(h) != 32:
        raise DistrictError("result slice hash: expected 32 bytes")
    out = {}
    for z, entry in m["zones"].items():
        if (not isinstance(z, str) or not ZONE_RE.match(z) or not isinstance(entry, list) or len(entry) != 3
                or not isinstance(entry[0], bytes) or len(entry[0]) != BOOK_PREFIX_BYTES):
            raise DistrictError(f"result slice: zone entry {z!r} is not [book hash prefix ({BOOK_PREFIX_BYTES} "
                                "bytes), sold, bought]")
        lots = []
        for side in entry[1:]:
            if not isinstance(side, list) or len(side) > 4 * MAX_ZONES * MAX_STEPS:
                raise DistrictError(f"result slice: lots of {z!r} are not a list")
            for x in side:
                if (not isinstance(x, list) or len(x) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in x)
                        or not 0 <= x[0] < MAX_PRICE or not 0 < x[1] <= MAX_WH):
                    raise DistrictError(f"result slice: lot {x!r} of {z!r} is not [price, Wh]")
            lots.append(tuple((x[0], x[1]) for x in side))
        out[z] = ZoneLots(z, entry[0], lots[0], lots[1])
    return h, _int(m, "start", 1 << 40), out
