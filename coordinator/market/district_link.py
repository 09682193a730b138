"""The district's one overlay key (district.py has the rules).

    mg/district/<district>/<interval start>   slot "zone:<zone>": one ZoneOffer per coordinator

A coordinator publishes its own zone's offer and reads this key only: a
record per coordinator of the district (tens of records of under 1 KB), not
another zone's orders or meter totals. Which zone a publisher speaks for is
the caller's knowledge (each zone's membership), never what the record
says: `zone_of(publisher public key) -> zone name or None`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

from .district import DistrictError, DistrictResult, ZoneOffer, choose_offers, clear_district, decode_offer
from .orders import ZONE_RE

log = logging.getLogger("microgrid.market.district")

OFFER_TTL_S = 3600


class SigningOverlay(Protocol):
    async def put(self, key: str, value: bytes, ttl_s: int, *, slot: str = "") -> bool: ...

    async def get(self, key: str, timeout_s: float | None = None) -> list[Any]: ...


def district_key(district: str, interval_start: int) -> str:
    if not isinstance(district, str) or not ZONE_RE.match(district):
        raise DistrictError(f"district={district!r}: expected 1..32 characters of [a-z0-9._-]")
    if isinstance(interval_start, bool) or not isinstance(interval_start, int) or interval_start < 0:
        raise DistrictError(f"interval_start={interval_start!r}: expected a unix time >= 0")
    return f"mg/district/{district}/{interval_start}"


def offer_slot(zone: str) -> str:
    return f"zone:{zone}"


async def publish_offer(overlay: SigningOverlay, district: str, offer: ZoneOffer) -> bool:
    return await overlay.put(district_key(district, offer.interval_start), offer.encode(), OFFER_TTL_S,
                             slot=offer_slot(offer.zone))


async def read_offers(overlay: SigningOverlay, district: str, interval_start: int,
                      zone_of: Callable[[bytes], str | None]) -> dict[str, ZoneOffer]:
    """Per zone, the offer most of its coordinators published. Records of
    publishers no zone claims, in another zone's slot, or that do not
    decode are ignored (logged)."""
    published = []
    for rec in await overlay.get(district_key(district, interval_start)):
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


async def clear_from_overlay(overlay: SigningOverlay, district: str, interval_start: int, interval_s: int,
                             zone_of: Callable[[bytes], str | None]) -> DistrictResult:
    """Read the district key and clear it (every coordinator gets the same
    result from the same records)."""
    offers = await read_offers(overlay, district, interval_start, zone_of)
    return clear_district([o for o in offers.values() if o.interval_s == interval_s], district,
                          interval_start, interval_s)
