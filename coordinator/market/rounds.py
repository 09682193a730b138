"""A household's round record: its meter total for the interval that just
ended and its orders for a later one, in ONE signed overlay record per
household and interval (issue 15; SPEC.md section 2).

    mg/round/<zone>/<start>[/<shard>]   slot ""       one RoundRecord per household
                                        slot "settled" one SettledRound per settling coordinator

Why one record: at 10,000 households in zones of 100, what a settling
coordinator's node carries is dominated by the zone's values reaching it
(OpenDHT pushes each listened value from 4 storing nodes in each address
family: 8 copies), and each record costs ~200 bytes of framing and
signature, OpenDHT's per-value framing and a UDP packet on top of its body.
An order record (~390 bytes) and a meter-total record (~220 bytes) per
household and interval become one of ~420 bytes; the zone's interval keys
halve (one instead of the book's and the metering's), and with them the
keys a storing node is near.

`start` names the round: interval [start, start + len) has just ended. The
record carries
- `meter`: the household's net export and import over that interval, Wh
  (absent when it has no total, e.g. its first interval);
- `orders`: its signed orders (orders.py encoding, each checked by its own
  signature as in the book) for a later interval, whose book collector
  reads this round: `orders_round(interval)` = interval - 2 len (published
  at the round's end plus the settle delay, well before that interval's
  gate closes).

A settling coordinator that has read the round (every member's meter
total) publishes a `SettledRound` under the same key, slot "settled": how
many totals it settled on and their hash. Peers compare it (the settlement
is the same on every coordinator when they saw the same totals), and it is
also what ends the listens of the round: the overlay stops a cancelled
listen at its next delivery (engine.py: cancelListen is never called), and
this record is one, so a past round's listens do not keep being refreshed
through the next interval.

Pure encoding and decoding; `publish_round`/`read_round` only call the
overlay's put/get.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol

import cbor2

from .orders import INTERVAL_LENGTHS_S, MAX_ORDER_BYTES, ZONE_RE, OrderError, SignedOrder, decode_order

log = logging.getLogger("microgrid.market.rounds")

ROUND_PREFIX = "mg/round/"
FORMAT_VERSION = 1
SETTLED_SLOT = "settled"
# Orders one household publishes per round: a buy and a sell, a battery's
# charge and discharge. Three of at most 400 bytes stay inside an overlay
# record body (1,536 bytes).
MAX_ORDERS = 3
MAX_WH = 1 << 40
# The round's record lives until the orders' book is cleared and repaired
# (gate closure plus half the gate lead, at most ~2 intervals after the
# round): the smallest lifetime bucket above that (engine.TTL_BUCKETS).
TTL_S = 1800


class RoundError(ValueError):
    """A round record that cannot be read, or arguments naming no round."""


class SigningOverlay(Protocol):
    async def put(self, key: str, value: bytes, ttl_s: int, *, slot: str = "") -> bool: ...

    async def get(self, key: str, timeout_s: float | None = None) -> list[Any]: ...


def round_key(zone: str, start: int) -> str:
    """The round's base name (the overlay adds the shard, keys.py)."""
    if not isinstance(zone, str) or not ZONE_RE.match(zone):
        raise RoundError(f"zone={zone!r}: expected 1..32 characters of [a-z0-9._-]")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise RoundError(f"start={start!r}: expected a unix time >= 0")
    return f"{ROUND_PREFIX}{zone}/{start}"


def orders_round(interval_start: int, interval_s: int) -> int:
    """The round whose records carry the orders for `interval_start`."""
    return interval_start - 2 * interval_s


@dataclass(frozen=True)
class RoundRecord:
    """One household's word for one round."""

    start: int
    length: int
    meter: tuple[int, int] | None  # (export Wh, import Wh) over [start, start + length)
    orders: tuple[bytes, ...]  # signed orders (orders.py encoding)

    def encode(self) -> bytes:
        m: dict[str, Any] = {"v": FORMAT_VERSION, "start": self.start, "len": self.length,
                             "orders": list(self.orders)}
        if self.meter is not None:
            m["meter"] = list(self.meter)
        return bytes(cbor2.dumps(m, canonical=True))


def make_round(start: int, length: int, meter: tuple[int, int] | None,
               orders: Iterable[SignedOrder | bytes] = ()) -> RoundRecord:
    """A round record checked as a reader would check it."""
    rec = RoundRecord(start, length, meter,
                      tuple(o.encoded if isinstance(o, SignedOrder) else bytes(o) for o in orders))
    return decode_round(rec.encode())


def _uint(m: Mapping[str, Any], name: str, hi: int) -> int:
    v = m.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
        raise RoundError(f"{name}={v!r}: expected an integer in 0..{hi}")
    return v


def decode_round(data: bytes) -> RoundRecord:
    """A round record read from the overlay (anyone's bytes), or RoundError
    naming what is wrong. Only the canonical encoding is accepted. The
    orders are bounded in number and size here; their signatures and terms
    are the book's to judge (orders.OrderFilter)."""
    try:
        m = cbor2.loads(data)
    except Exception as e:
        raise RoundError(f"round record is not CBOR: {e}") from None
    if not isinstance(m, dict) or m.get("v") != FORMAT_VERSION:
        raise RoundError(f"round record: expected a map with v={FORMAT_VERSION}")
    if set(m) - {"v", "start", "len", "meter", "orders"}:
        raise RoundError(f"round record: unknown fields {sorted(map(str, set(m) - {'v', 'start', 'len', 'meter', 'orders'}))}")
    length = _uint(m, "len", 86400)
    if length not in INTERVAL_LENGTHS_S:
        raise RoundError(f"len={length}: expected one of {INTERVAL_LENGTHS_S}")
    start = _uint(m, "start", 1 << 40)
    if start % length:
        raise RoundError(f"start={start}: expected a multiple of len={length}")
    meter = m.get("meter")
    if meter is not None:
        if (not isinstance(meter, list) or len(meter) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= MAX_WH for x in meter)):
            raise RoundError(f"meter={meter!r}: expected [export Wh, import Wh], each 0..{MAX_WH}")
        meter = (meter[0], meter[1])
    orders = m.get("orders")
    if (not isinstance(orders, list) or len(orders) > MAX_ORDERS
            or any(not isinstance(o, bytes) or not 0 < len(o) <= MAX_ORDER_BYTES for o in orders)):
        raise RoundError(f"orders: expected a list of at most {MAX_ORDERS} signed orders of 1..{MAX_ORDER_BYTES} bytes")
    rec = RoundRecord(start, length, meter, tuple(orders))
    if rec.encode() != bytes(data):
        raise RoundError("round record is not canonically encoded")
    return rec


@dataclass(frozen=True)
class SettledRound:
    """What a settling coordinator settled a round on: how many meter
    totals and the SHA-256 of them (`meters_hash`)."""

    start: int
    length: int
    meters: int
    hash: bytes

    def encode(self) -> bytes:
        return bytes(cbor2.dumps({"v": FORMAT_VERSION, "start": self.start, "len": self.length,
                                  "meters": self.meters, "hash": self.hash}, canonical=True))


def decode_settled(data: bytes) -> SettledRound:
    try:
        m = cbor2.loads(data)
    except Exception as e:
        raise RoundError(f"settled record is not CBOR: {e}") from None
    if not isinstance(m, dict) or m.get("v") != FORMAT_VERSION or not isinstance(m.get("hash"), bytes) \
            or len(m["hash"]) != 32:
        raise RoundError(f"settled record: expected a map with v={FORMAT_VERSION} and a 32-byte hash")
    rec = SettledRound(_uint(m, "start", 1 << 40), _uint(m, "len", 86400), _uint(m, "meters", 1 << 32), m["hash"])
    if rec.encode() != bytes(data):
        raise RoundError("settled record is not canonically encoded (or carries unknown fields)")
    return rec


def meters_hash(meters: Mapping[bytes, tuple[int, int]]) -> bytes:
    """SHA-256 of the canonical CBOR list of [publisher, export, import],
    sorted by publisher: the same on every coordinator that saw the same
    totals."""
    return hashlib.sha256(cbor2.dumps([[p, e, i] for p, (e, i) in sorted(meters.items())], canonical=True)).digest()


# -- reading a round's records -------------------------------------------------------


def households(recs: Iterable[Any], start: int, length: int,
               is_member: Callable[[bytes], bool] | None = None) -> dict[bytes, RoundRecord]:
    """Per publisher, its round record for `start` (slot ""), from records
    read or listened to under the round's keys (the overlay gives each
    publisher's newest). Non-members, other slots, other rounds and
    records that do not decode are ignored (logged)."""
    out: dict[bytes, RoundRecord] = {}
    for rec in recs:
        if rec.slot != "" or (is_member is not None and not is_member(rec.publisher)):
            continue
        try:
            r = decode_round(rec.body)
        except RoundError as e:
            log.info("round record of %s ignored: %s", rec.publisher.hex()[:16], e)
            continue
        if (r.start, r.length) == (start, length):
            out[rec.publisher] = r
    return out


def meters_from(rounds: Mapping[bytes, RoundRecord]) -> dict[bytes, tuple[int, int]]:
    """Each household's (export, import) Wh for the round."""
    return {p: r.meter for p, r in rounds.items() if r.meter is not None}


def orders_from(rounds: Mapping[bytes, RoundRecord], interval_start: int | None = None) -> list[SignedOrder]:
    """The signed orders the households published in the round whose owner
    is their publisher (a household speaks for itself here), for
    `interval_start` if given. Orders that do not decode are ignored
    (logged); the book's OrderFilter judges the rest."""
    out = []
    for publisher, r in sorted(rounds.items()):
        for data in r.orders:
            try:
                so = decode_order(data)
            except OrderError as e:
                log.info("order in the round record of %s ignored: %s", publisher.hex()[:16], e)
                continue
            if so.order.owner != publisher:
                log.info("order in the round record of %s ignored: owned by %s", publisher.hex()[:16],
                         so.order.owner.hex()[:16])
                continue
            if interval_start is None or so.order.interval_start == interval_start:
                out.append(so)
    return out


def settled_from(recs: Iterable[Any], start: int) -> dict[bytes, SettledRound]:
    """Per settling coordinator, what it settled round `start` on."""
    out: dict[bytes, SettledRound] = {}
    for rec in recs:
        if rec.slot != SETTLED_SLOT:
            continue
        try:
            s = decode_settled(rec.body)
        except RoundError as e:
            log.info("settled record of %s ignored: %s", rec.publisher.hex()[:16], e)
            continue
        if s.start == start:
            out[rec.publisher] = s
    return out


async def publish_round(overlay: SigningOverlay, zone: str, rec: RoundRecord, ttl_s: int = TTL_S) -> bool:
    """One put: the household's record for the round."""
    return await overlay.put(round_key(zone, rec.start), rec.encode(), ttl_s)


async def publish_settled(overlay: SigningOverlay, zone: str, settled: SettledRound, ttl_s: int = TTL_S) -> bool:
    return await overlay.put(round_key(zone, settled.start), settled.encode(), ttl_s, slot=SETTLED_SLOT)


async def read_round(overlay: SigningOverlay, zone: str, start: int, length: int,
                     is_member: Callable[[bytes], bool] | None = None) -> dict[bytes, RoundRecord]:
    """Every household's record for the round (all shards)."""
    return households(await overlay.get(round_key(zone, start)), start, length, is_member)
