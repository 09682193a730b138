"""The district's overlay keys (district.py and shards.py have the rules).

    mg/district/<district>/<interval start>/<shard>   slot "zone:<zone>": one ZoneOffer per publisher
    mg/district/<district>/<interval start>           slot "zone:shard.<k>": a shard's leftovers (shards.py)

`shard` = the first two bytes of SHA-256 of the zone name, big-endian, mod
the district's shard count (`shards`, the same on every coordinator of the
district, like a zone's; 1 means no suffix and no shard level). Spread over
shards, no storing node carries more than its share of the offers
(measured: one key for 100 zones put 1.1-1.5 MB per interval on its
storing nodes, bench_overlay households), and each shard's clearers read
only their shard's offers.

A coordinator publishes its own zone's offer and reads its level's keys
only: a record per zone (a few hundred bytes each), not another zone's
orders or meter totals. Which zone (or shard) a publisher speaks for is
the caller's knowledge (each zone's membership, the interval's clearers),
never what the record says: `zone_of(publisher public key) -> zone name
or None`.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from .district import (
    DistrictError, DistrictResult, ZoneLots, ZoneOffer, choose_offers, clear_district, decode_offer, decode_slice,
    encode_lots, result_lots)
from .orders import ZONE_RE

log = logging.getLogger("microgrid.market.district")

OFFER_TTL_S = 3600


class SigningOverlay(Protocol):
    async def put(self, key: str, value: bytes, ttl_s: int, *, slot: str = "") -> bool: ...

    async def get(self, key: str, timeout_s: float | None = None, *,
                  publishers: Iterable[bytes] | None = None) -> list[Any]: ...


MAX_SHARDS = 256


def shard_of(zone: str, shards: int) -> int:
    return int.from_bytes(hashlib.sha256(zone.encode()).digest()[:2], "big") % shards


def district_key(district: str, interval_start: int, shard: int | None = None) -> str:
    """The key of one shard (None: the unsharded key, shards == 1)."""
    if not isinstance(district, str) or not ZONE_RE.match(district):
        raise DistrictError(f"district={district!r}: expected 1..32 characters of [a-z0-9._-]")
    if isinstance(interval_start, bool) or not isinstance(interval_start, int) or interval_start < 0:
        raise DistrictError(f"interval_start={interval_start!r}: expected a unix time >= 0")
    base = f"mg/district/{district}/{interval_start}"
    return base if shard is None else f"{base}/{shard}"


def offer_key(district: str, interval_start: int, zone: str, shards: int = 1) -> str:
    """Where `zone`'s offer goes."""
    return district_key(district, interval_start, None if shards == 1 else shard_of(zone, shards))


def all_keys(district: str, interval_start: int, shards: int = 1) -> list[str]:
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise DistrictError(f"shards={shards!r}: expected an integer in 1..{MAX_SHARDS}")
    if shards == 1:
        return [district_key(district, interval_start)]
    return [district_key(district, interval_start, k) for k in range(shards)]


def offer_slot(zone: str) -> str:
    return f"zone:{zone}"


async def publish_offer(overlay: SigningOverlay, district: str, offer: ZoneOffer, shards: int = 1) -> bool:
    return await overlay.put(offer_key(district, offer.interval_start, offer.zone, shards), offer.encode(),
                             OFFER_TTL_S, slot=offer_slot(offer.zone))


def offers_from(recs: Iterable[Any], interval_start: int,
                zone_of: Callable[[bytes], str | None]) -> dict[str, ZoneOffer]:
    """Per zone, the offer most of its coordinators published, from records
    read (or listened to) under the district's keys. Records of publishers
    no zone claims, in another zone's slot, or that do not decode are
    ignored (logged)."""
    published = []
    for rec in recs:
        zone = zone_of(rec.publisher)
        if zone is None or rec.slot != offer_slot(zone):
            log.info("district offer of %s ignored: not a coordinator of the zone of slot %r",
                     rec.publisher.hex()[:16], rec.slot)
            continue
        try:
            offer = decode_offer(rec.body)
        except DistrictError as e:
            log.info("district offer of %s ignored: %s", rec.publisher.hex()[:16], e)
            continue
        if offer.interval_start != interval_start:
            continue
        published.append((zone, offer))
    return choose_offers(published)


async def read_offers(overlay: SigningOverlay, district: str, interval_start: int,
                      zone_of: Callable[[bytes], str | None], shards: int = 1) -> dict[str, ZoneOffer]:
    """Every shard's records, then offers_from."""
    recs: list[Any] = []
    for key in all_keys(district, interval_start, shards):
        recs += await overlay.get(key)
    return offers_from(recs, interval_start, zone_of)


async def clear_from_overlay(overlay: SigningOverlay, district: str, interval_start: int, interval_s: int,
                             zone_of: Callable[[bytes], str | None], shards: int = 1) -> DistrictResult:
    """Read the district's keys and clear them (every coordinator gets the
    same result from the same records)."""
    offers = await read_offers(overlay, district, interval_start, zone_of, shards)
    return clear_district([o for o in offers.values() if o.interval_s == interval_s], district,
                          interval_start, interval_s)


# -- results back down ---------------------------------------------------------------
#
# Every coordinator may clear the district itself from the offers; but if
# every settling coordinator of every zone listened to every offer, the
# offers' storing nodes would push each offer to all of them (100 zones x
# 200 settlers: 20,000 deliveries per listened node and interval, measured
# 2-3 MB on each). So `CLEARERS` coordinators a level read the offers,
# clear, and publish the result in slices under the key they read:
#
#     mg/district/<district>/<start>/<shard>   slot "result" ("result/1", ... when split)
#
# holding the whole result's hash and, per zone of that shard, its cleared
# book hash and lots. With district shards (market/shards.py) each shard
# has its own clearers, who read the shard's offers, publish the shard's
# leftovers under the district's base key (`publish_offer(..., shards=1)`,
# the zone name `shard.<k>`), where the district's clearers read one offer
# per shard and publish the shards' lots (`publish_results(..., shards=1)`);
# each shard's clearers read their shard's lots there (`read_lots(...,
# shards=1)`) and publish their zones' lots (`publish_zone_lots`). A zone's
# coordinators read their shard's key for its clearers' records only (by
# name: the offers do not travel) and take the lots most clearers agree on;
# anyone can check a clearer by clearing the offers itself
# (shards.clear_in_shards). Under the key read, not a key of their own: a
# clearer's slice is the delivery that ends its cancelled listen on that
# key (the engine stops a listen at its next delivery, overlay/engine.py),
# which would otherwise be refreshed on into the next interval. Clearers
# are chosen among coordinators that do not settle the interval (a settler
# already reads its whole zone's round).

CLEARERS = 3
RESULT_SLOT = "result"


def clearer_zones(zones: Iterable[str], interval_start: int, count: int = CLEARERS) -> list[str]:
    """The zones one of whose coordinators (not settling this interval)
    clears `zones` (a shard's, or the whole district's) for this interval."""
    return sorted(zones, key=lambda z: hashlib.sha256(f"{z}/{interval_start}".encode()).digest())[:count]


def result_key(district: str, interval_start: int, zone: str, shards: int = 1) -> str:
    """Where the result slice for `zone` is published: its offer's key."""
    return offer_key(district, interval_start, zone, shards)


# A record body (overlay records.MAX_BODY_BYTES): a shard's slice larger
# than this continues in the slots "result/1", "result/2", ...
MAX_SLICE_BYTES = 1536


def result_slot(part: int) -> str:
    return RESULT_SLOT if part == 0 else f"{RESULT_SLOT}/{part}"


def split_slices(result: DistrictResult, zones: Iterable[str], limit: int = MAX_SLICE_BYTES) -> list[bytes]:
    """`zones`' lots as slices of at most `limit` bytes each, zones in name
    order, each zone in one slice. DistrictError when one zone's lots alone
    exceed the limit."""
    return split_lots_slices(result.hash, result.interval_start, result.interval_s, result_lots(result, zones), limit)


def split_lots_slices(result_hash: bytes, interval_start: int, interval_s: int, lots: Mapping[str, ZoneLots],
                      limit: int = MAX_SLICE_BYTES) -> list[bytes]:
    """split_slices from zones' lots (a shard's clearers: shards.zone_lots)."""
    out: list[bytes] = []
    group: dict[str, ZoneLots] = {}
    for z in sorted(lots):
        if group and len(encode_lots(result_hash, interval_start, interval_s, {**group, z: lots[z]})) > limit:
            out.append(encode_lots(result_hash, interval_start, interval_s, group))
            group = {}
        group[z] = lots[z]
        if len(encode_lots(result_hash, interval_start, interval_s, group)) > limit:
            raise DistrictError(f"the lots of zone {z} alone exceed {limit} bytes: fewer offer steps (max_steps)")
    if group:
        out.append(encode_lots(result_hash, interval_start, interval_s, group))
    return out


async def publish_results(overlay: SigningOverlay, district: str, result: DistrictResult,
                          zones: Iterable[str], shards: int = 1) -> bool:
    """One slice per shard holding `zones`' lots (more when it would not fit
    in one record). True when all were stored."""
    by_key: dict[str, list[str]] = {}
    for z in zones:
        by_key.setdefault(result_key(district, result.interval_start, z, shards), []).append(z)
    ok = True
    for key, zs in sorted(by_key.items()):
        for part, body in enumerate(split_slices(result, zs)):
            ok = await overlay.put(key, body, OFFER_TTL_S, slot=result_slot(part)) and ok
    return ok


async def publish_zone_lots(overlay: SigningOverlay, district: str, interval_start: int, interval_s: int,
                            result_hash: bytes, lots: Mapping[str, ZoneLots], shards: int) -> bool:
    """A shard's clearers: their zones' lots (shards.zone_lots), in slices
    under the shard's key, read by the zones as a district's (read_lots)."""
    keys = {result_key(district, interval_start, z, shards) for z in lots}
    if len(keys) != 1:
        raise DistrictError(f"zones of {len(keys)} shards given: one shard's zones at a time")
    key = keys.pop()
    ok = True
    for part, body in enumerate(split_lots_slices(result_hash, interval_start, interval_s, lots)):
        ok = await overlay.put(key, body, OFFER_TTL_S, slot=result_slot(part)) and ok
    return ok


def lots_from(recs: Iterable[Any], zone: str, interval_start: int,
              is_clearer: Callable[[bytes], bool]) -> ZoneLots | None:
    """`zone`'s lots as most clearers published them (None: no clearer's
    slice holds the zone). Slices of publishers who are not this interval's
    clearers, or that do not decode, are ignored."""
    got = result_from(recs, zone, interval_start, is_clearer)
    return None if got is None else got[1]


def result_from(recs: Iterable[Any], zone: str, interval_start: int,
                is_clearer: Callable[[bytes], bool]) -> tuple[bytes, ZoneLots] | None:
    """lots_from with the result hash the majority's slices name."""
    votes: dict[tuple[bytes, ZoneLots], int] = {}
    for rec in recs:
        if not (rec.slot == RESULT_SLOT or rec.slot.startswith(RESULT_SLOT + "/")) or not is_clearer(rec.publisher):
            continue
        try:
            h, start, lots = decode_slice(rec.body)
        except DistrictError as e:
            log.info("district result slice of %s ignored: %s", rec.publisher.hex()[:16], e)
            continue
        if start == interval_start and zone in lots:
            k = (h, lots[zone])
            votes[k] = votes.get(k, 0) + 1
    if not votes:
        return None
    return max(sorted(votes.items(), key=lambda kv: kv[0][0]), key=lambda kv: kv[1])[0]


def _agreeing(recs: Iterable[Any], zone: str, interval_start: int, is_clearer: Callable[[bytes], bool]) -> int:
    """How many clearers' records give `zone` the lots lots_from picks."""
    recs = list(recs)
    best = lots_from(recs, zone, interval_start, is_clearer)
    n = 0
    for rec in recs:
        if not (rec.slot == RESULT_SLOT or rec.slot.startswith(RESULT_SLOT + "/")) or not is_clearer(rec.publisher):
            continue
        try:
            _h, start, lots = decode_slice(rec.body)
        except DistrictError:
            continue
        n += start == interval_start and lots.get(zone) == best
    return n


async def read_lots(overlay: SigningOverlay, district: str, interval_start: int, zone: str,
                    clearers: Sequence[bytes], shards: int = 1, timeout_s: float | None = None) -> ZoneLots | None:
    """`zone`'s lots as most clearers published them, reading as few of
    their records as a majority needs: a majority of the clearers by name
    first (a get pulls each record from every storing node, 16 copies), the
    others only when those do not agree."""
    got = await read_result(overlay, district, interval_start, zone, clearers, shards, timeout_s)
    return None if got is None else got[1]


async def read_result(overlay: SigningOverlay, district: str, interval_start: int, zone: str,
                      clearers: Sequence[bytes], shards: int = 1,
                      timeout_s: float | None = None) -> tuple[bytes, ZoneLots] | None:
    """read_lots with the result hash (a shard's clearers name the
    district's result in their own slices: shards.levels_hash)."""
    key = result_key(district, interval_start, zone, shards)
    need = len(clearers) // 2 + 1
    is_clearer = set(clearers).__contains__
    recs = list(await overlay.get(key, timeout_s, publishers=list(clearers[:need])))
    if _agreeing(recs, zone, interval_start, is_clearer) < need and len(clearers) > need:
        recs += await overlay.get(key, timeout_s, publishers=list(clearers[need:]))
    return result_from(recs, zone, interval_start, is_clearer)
