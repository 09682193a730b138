"""The level between feeder zones and the district: district shards clear
their own zones' offers first and offer the district only what is left.
Pure: no clock, no I/O (the overlay side is district_link.py).

Why a level here: with one district level, each of the interval's three
clearers read every zone's offer, and the overlay delivers each record
from about eight storing nodes: at 10,000 households (100 zones) that was
1.1-1.4 MB per clearer and interval, over the 1 MB a coordinator may
spend. With shards, a shard's clearers read its ~16 zones' offers, and the
district's clearers read one offer per shard: each of them reads a sixth.

What each level does (district.py's rules apply at both):

1. Shard k (the zones with `shard_of(zone) == k`) clears its zones' offers
   with `clear_district`, exactly as a district of those zones would: each
   pair at the midpoint of its two prices, connection caps respected, no
   zone trading with itself.
2. What each zone has left (`leftovers`): its cheapest asks less what it
   sold, its dearest bids less what it bought (clear_district fills each
   zone's asks lowest first and its bids highest first), each side cut to
   what its connection still carries. Every zone's leftover steps together
   make the shard's offer (`shard_offer`, named `shard.<k>`, at most
   MAX_STEPS steps per side merged at the least favourable price, its
   book hash the shard result's hash). Its caps are unlimited: the zones'
   caps are already in its steps.
3. The district clears the shards' offers (`clear_district` again): no
   shard trades with itself, since its own zones' leftovers did not cross.
4. Down: the lots shard k sold and bought in the district go to its zones'
   leftover steps, asks by price then zone name, bids likewise from the
   highest (`split_lots`). A zone's lots are its shard-level lots plus
   that share (`zone_lots`), and its coordinators allocate them to their
   orders as before (district.allocate_lots).

Every lot stays within the limits of the step it came from, so no order
trades at a price it did not accept. The results differ from a single
district level only in price (pairs inside a shard meet first, each at
its midpoint), never in what any order accepted.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Mapping

from .district import (
    MAX_STEPS, MAX_WH, DistrictError, DistrictResult, ZoneLots, ZoneOffer, _merge, clear_district)
from .district_link import shard_of
from .orders import ZONE_RE

SHARD_PREFIX = "shard."


def shard_name(shard: int) -> str:
    """A shard's name where the district expects a zone's: `shard.<k>`."""
    return f"{SHARD_PREFIX}{shard}"


def _take(steps: Iterable[tuple[int, int]], skip: int, keep: int) -> tuple[tuple[int, int], ...]:
    """Steps in order after the first `skip` Wh went, cut to `keep` Wh."""
    out = []
    for price, wh in steps:
        gone = min(wh, skip)
        skip -= gone
        wh = min(wh - gone, keep)
        keep -= wh
        if wh:
            out.append((price, wh))
    return tuple(out)


def leftovers(offers: Iterable[ZoneOffer], result: DistrictResult) -> dict[str, ZoneOffer]:
    """Each zone's offer after `result` (its shard's clearing of `offers`):
    what it can still sell and buy, within what its connection carries."""
    out = {}
    for o in offers:
        sold = sum(t.wh for t in result.trades if t.seller_zone == o.zone)
        bought = sum(t.wh for t in result.trades if t.buyer_zone == o.zone)
        exp, imp = o.export_cap_wh - sold, o.import_cap_wh - bought
        out[o.zone] = ZoneOffer(o.zone, o.interval_start, o.interval_s, o.book_hash,
                                _take(o.asks, sold, exp), _take(o.bids, bought, imp), exp, imp)
    return out


def shard_offer(shard: int, left: Mapping[str, ZoneOffer], result: DistrictResult,
                max_steps: int = MAX_STEPS) -> ZoneOffer:
    """The offer shard `shard` publishes to the district: its zones'
    leftover steps together, named shard_name(shard), book hash = the
    shard's result hash (so the district's result names which clearing of
    the shard it builds on)."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 1 <= max_steps <= MAX_STEPS:
        raise DistrictError(f"max_steps={max_steps!r}: expected an integer in 1..{MAX_STEPS}")
    asks: dict[int, int] = {}
    bids: dict[int, int] = {}
    for o in left.values():
        for p, w in o.asks:
            asks[p] = asks.get(p, 0) + w
        for p, w in o.bids:
            bids[p] = bids.get(p, 0) + w
    return ZoneOffer(shard_name(shard), result.interval_start, result.interval_s, result.hash,
                     _merge(sorted(asks.items()), max, max_steps), _merge(sorted(bids.items(), reverse=True), min, max_steps),
                     MAX_WH, MAX_WH)


def split_lots(lots: ZoneLots | None, left: Mapping[str, ZoneOffer]) -> dict[str, tuple[list[tuple[int, int]], list[tuple[int, int]]]]:
    """The district's lots for one shard, given to its zones' leftover
    steps: (sold, bought) per zone. Raises DistrictError when a lot finds
    no step accepting its price (the district cleared another offer than
    these leftovers make)."""
    out: dict[str, tuple[list[tuple[int, int]], list[tuple[int, int]]]] = {z: ([], []) for z in left}
    if lots is None:
        return out
    asks = sorted((p, z, w) for z, o in left.items() for p, w in o.asks)
    bids = sorted((-p, z, w) for z, o in left.items() for p, w in o.bids)
    for side, queue, given in ((0, asks, lots.sold), (1, bids, lots.bought)):
        rest = [w for _, _, w in queue]
        for price, wh in given:
            need = wh
            for k, (p, zone, _w) in enumerate(queue):
                limit = -p if side else p
                if (limit < price) if side else (limit > price):
                    break  # asks ascend, bids descend: no later step accepts this price
                q = min(rest[k], need)
                if q:
                    rest[k] -= q
                    need -= q
                    out[zone][side].append((price, q))
                if need == 0:
                    break
            if need:
                raise DistrictError(f"{lots.zone}: {need} Wh of a lot at {price} find no zone step accepting it")
    return out


def zone_lots(offers: Mapping[str, ZoneOffer], result: DistrictResult,
              district_lots: ZoneLots | None) -> dict[str, ZoneLots]:
    """Each zone's lots from its shard's clearing (`result` of `offers`) and
    the shard's share of the district's (`district_lots`, None: the shard
    traded nothing there): what its coordinators allocate to their orders."""
    if district_lots is not None and (len(district_lots.book_hash) == 0
                                      or result.hash[:len(district_lots.book_hash)] != district_lots.book_hash):
        raise DistrictError(f"the district cleared another offer of {district_lots.zone} than this shard's result")
    share = split_lots(district_lots, leftovers(offers.values(), result))
    out = {}
    for zone, o in sorted(offers.items()):
        sold, bought = result.lots(zone)
        more_sold, more_bought = share[zone]
        out[zone] = ZoneLots(zone, o.book_hash, tuple(sorted(sold + more_sold)),
                             tuple(sorted(bought + more_bought, reverse=True)))
    return out


def levels_hash(shard_result: DistrictResult, district_hash: bytes | None) -> bytes:
    """What a shard's result slices name as the result: SHA-256 of its own
    clearing's hash and the district result's hash (no district result:
    of its own alone), so clearers that agree on both publish equal bytes
    and anyone holding the shard's offer (`book`) and the district's slice
    (`hash`) can check it."""
    return hashlib.sha256(shard_result.hash + (district_hash or b"")).digest()


def clear_in_shards(offers: Iterable[ZoneOffer], shards: int, district: str, interval_start: int,
                    interval_s: int, max_steps: int = MAX_STEPS) -> dict[str, ZoneLots]:
    """Both levels at once, from every zone's offer: each zone's lots. What
    the coordinators compute piecewise over the overlay; the reference the
    tests and the bench check them against."""
    if not isinstance(district, str) or not ZONE_RE.match(district):
        raise DistrictError(f"district={district!r}: expected a zone-like name")
    by_shard: dict[int, dict[str, ZoneOffer]] = {}
    for o in offers:
        by_shard.setdefault(shard_of(o.zone, shards), {})[o.zone] = o
    results = {k: clear_district(zs.values(), shard_name(k), interval_start, interval_s) for k, zs in by_shard.items()}
    upward = [shard_offer(k, leftovers(by_shard[k].values(), r), r, max_steps) for k, r in sorted(results.items())]
    top = clear_district(upward, district, interval_start, interval_s)
    books = dict(top.books)
    out: dict[str, ZoneLots] = {}
    for k, r in sorted(results.items()):
        sold, bought = top.lots(shard_name(k))
        mine = ZoneLots(shard_name(k), books[shard_name(k)], tuple(sold), tuple(bought))
        out.update(zone_lots(by_shard[k], r, mine))
    return out
