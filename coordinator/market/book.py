"""Publishing orders through the overlay and collecting a zone's book.

Keys:
    mg/market/<zone>/<interval_start>           signed orders (orders.py encoding)
    mg/market-result/<zone>/<interval_start>    cleared-book hashes, one per coordinator

The overlay is anything with

    async put(key: str, value: bytes, ttl_s: int) -> bool
    async get(key: str) -> list[bytes | record]
    listen(key: str, callback: Callable[[bytes | record], None]) -> handle with .cancel()

where a record (coordinator/overlay's SignedRecord) carries the value as
`.body` and its signer as `.publisher_id`. When `put` takes a `slot`
keyword (coordinator/overlay does: a newer value in the same slot replaces
the older for readers), each order goes in the slot "<owner>:<nonce>", so a
coordinator's orders for one interval live side by side, and re-publishing
an order (same owner and nonce) replaces it, which is also how the market
treats it.

Orders are signed by their owners, so the overlay's own signature adds
nothing the market relies on: every value read is decoded and checked by an
OrderFilter, which ignores invalid, unsigned, expired, duplicated or late
orders with a logged reason. Collection stops at gate closure (interval
start minus the configured lead time) by the clock passed in.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Mapping, Protocol, Sequence

import cbor2

from microgrid.shared.reading import key_id

from ..clock import Clock
from . import rounds
from .clearing import ClearedInterval, Comparison, compare_books
from .orders import DEFAULT_INTERVAL_S, ZONE_RE, OrderError, OrderFilter, SignedOrder, decode_order

log = logging.getLogger("microgrid.market.book")

MAX_TTL_S = 24 * 3600
RESULT_TTL_S = 3600
# Clock seconds between fetches of a book that is also listened to.
REFETCH_S = 30.0


class Overlay(Protocol):
    async def put(self, key: str, value: bytes, ttl_s: int) -> bool: ...

    async def get(self, key: str) -> list[Any]: ...

    def listen(self, key: str, callback: Callable[[Any], None]) -> Any: ...


class BookError(ValueError):
    """A zone or interval that cannot name a book."""


def order_key(zone: str, interval_start: int) -> str:
    """The overlay key a zone's orders for an interval live under."""
    _check(zone, interval_start)
    return f"mg/market/{zone}/{interval_start}"


def result_key(zone: str, interval_start: int) -> str:
    """Where coordinators publish their cleared-book hash for comparison."""
    _check(zone, interval_start)
    return f"mg/market-result/{zone}/{interval_start}"


def book_key(zone: str, interval_start: int, interval_s: int = DEFAULT_INTERVAL_S, round_records: bool = False) -> str:
    """Where a zone's orders for an interval are read: under their own key,
    or with round records (rounds.py) in the round two intervals before."""
    if round_records:
        return rounds.round_key(zone, rounds.orders_round(interval_start, interval_s))
    return order_key(zone, interval_start)


def order_bytes(value: Any, round_records: bool = False) -> list[bytes]:
    """The signed orders an overlay value carries: the value itself, or
    with round records the orders of a household's record that it owns (a
    household speaks for itself there; an undecodable record carries none).
    Raises TypeError for a value that is neither bytes nor a record."""
    data = value_bytes(value)
    if not round_records:
        return [data]
    if getattr(value, "slot", "") != "":
        return []  # another slot of the round key (a coordinator's settled record)
    try:
        rec = rounds.decode_round(data)
    except rounds.RoundError as e:
        log.info("round record ignored: %s", e)
        return []
    publisher = getattr(value, "publisher", None)
    return [o for o in rec.orders if publisher is None or _owner(o) == publisher]


def _owner(order: bytes) -> bytes | None:
    """The owner field of an encoded order, read without checking its
    signature (the book's filter does that once)."""
    try:
        body = cbor2.loads(cbor2.loads(order)[1])
        owner = body[8]
    except Exception:
        return None
    return owner if isinstance(owner, bytes) else None


def _check(zone: str, interval_start: int) -> None:
    if not isinstance(zone, str) or not ZONE_RE.match(zone):
        raise BookError(f"zone={zone!r}: expected 1..32 characters of [a-z0-9._-]")
    if isinstance(interval_start, bool) or not isinstance(interval_start, int) or interval_start < 0:
        raise BookError(f"interval_start={interval_start!r}: expected a unix time >= 0")


def value_bytes(v: Any) -> bytes:
    """The published bytes of what the overlay returned (bytes or a record)."""
    body = getattr(v, "body", v)
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError(f"overlay value of type {type(v).__name__}: expected bytes or a record with .body")
    return bytes(body)


def _takes_slot(overlay: Overlay) -> bool:
    try:
        return "slot" in inspect.signature(overlay.put).parameters
    except (TypeError, ValueError):
        return False


async def _put(overlay: Overlay, key: str, value: bytes, ttl_s: int, slot: str) -> bool:
    if _takes_slot(overlay):
        return await overlay.put(key, value, ttl_s, slot=slot)  # type: ignore[call-arg]
    return await overlay.put(key, value, ttl_s)


async def publish_order(overlay: Overlay, so: SignedOrder, now: float) -> bool:
    """Publish a signed order under its book's key until it expires. False
    when the overlay did not confirm it (or it is already dead)."""
    o = so.order
    ttl = min(int(o.expires - now), MAX_TTL_S)
    if ttl < 1:
        log.info("order %s not published: expired at %d, now %d", so.hash_hex[:16], o.expires, int(now))
        return False
    ok = await _put(overlay, order_key(o.zone, o.interval_start), so.encoded, ttl, f"{o.owner.hex()[:16]}:{o.nonce}")
    if not ok:
        log.warning("order %s for %s/%d: overlay did not confirm the put", so.hash_hex[:16], o.zone, o.interval_start)
    return ok


class BookCollector:
    """One zone's orders for one interval, gathered from the overlay until
    gate closure: every value under the key, as listened and as fetched."""

    def __init__(self, overlay: Overlay, zone: str, interval_start: int, clock: Clock,
                 interval_s: int = DEFAULT_INTERVAL_S, gate_lead_s: int = 300,
                 is_member: Callable[[bytes], bool] | None = None, round_records: bool = False) -> None:
        self.overlay = overlay
        # Orders ride in the households' round records (rounds.py): nothing
        # is there before the round's interval ends, so the collector
        # neither listens nor fetches before then.
        self.round_records = round_records
        self.quiet_until = rounds.orders_round(interval_start, interval_s) + interval_s if round_records else 0
        # Zone membership (coordinator/membership): an order whose owner is
        # not a current member is refused, whoever published it.
        self.is_member = is_member
        self.clock = clock
        self.key = book_key(zone, interval_start, interval_s, round_records)
        self.filter = OrderFilter(zone, interval_start, interval_s, gate_lead_s)
        self._handle: Any = None
        # Digests of values already judged: listen and repeated fetches see
        # the same values again; each is judged (and logged) once.
        self._seen: set[bytes] = set()

    @property
    def gate_closes_at(self) -> int:
        return self.filter.gate_closes_at

    def offer(self, value: Any) -> SignedOrder | None:
        """Take one overlay value (bytes or record) now; the accepted order
        (with round records: the last one the record carried) or None."""
        try:
            datas = order_bytes(value, self.round_records)
        except TypeError as e:
            log.info("order ignored (invalid): %s", e)
            self.filter.rejected["invalid"] += 1
            return None
        accepted = None
        for data in datas:
            accepted = self._judge(data) or accepted
        return accepted

    def _judge(self, data: bytes) -> SignedOrder | None:
        digest = hashlib.sha256(data).digest()
        if digest in self._seen:
            return None
        self._seen.add(digest)
        if self.is_member is None:
            return self.filter.offer(data, self.clock.now())
        try:
            so = decode_order(data)
        except OrderError as e:
            self.filter._reject(e)
            return None
        if not self.is_member(so.order.owner):
            self.filter.rejected["not-member"] = self.filter.rejected.get("not-member", 0) + 1
            log.info("order ignored (not-member): order %s from %s, not a member of the zone", so.hash_hex[:16],
                     so.order.owner.hex()[:16])
            return None
        return self.filter.offer(so, self.clock.now())

    def _on_value(self, value: Any) -> None:
        self.offer(value)

    def start(self) -> None:
        """Listen for orders as they are published."""
        if self._handle is None:
            self._handle = self.overlay.listen(self.key, self._on_value)

    def stop(self) -> None:
        if self._handle is not None and hasattr(self._handle, "cancel"):
            self._handle.cancel()
        self._handle = None

    async def fetch(self) -> None:
        """Fetch what is stored under the key (what a listen may have missed)."""
        for v in await self.overlay.get(self.key):
            self.offer(v)

    async def collect(self, poll_s: float = 5.0,
                      sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> list[SignedOrder]:
        """Listen and fetch until gate closure; return the book (sorted by
        hash). `poll_s` is in clock seconds; with a scaled clock the real
        wait is shortened accordingly. The listen delivers orders as they
        are stored, so fetches (what a listen may miss) come no more often
        than every REFETCH_S, and once more at gate closure."""
        real = getattr(self.clock, "real_seconds", None)
        if self.quiet_until and self.clock.now() < min(self.quiet_until, self.gate_closes_at):
            wait = min(self.quiet_until, self.gate_closes_at) - self.clock.now()
            await sleep(real(wait) if real else wait)
        self.start()
        try:
            while True:
                await self.fetch()
                left = self.gate_closes_at - self.clock.now()
                if left <= 0:
                    break
                wait = min(left, max(poll_s, REFETCH_S))
                await sleep(real(wait) if real else wait)
        finally:
            self.stop()
        return self.filter.orders()

    def orders(self) -> list[SignedOrder]:
        return self.filter.orders()


# -- comparing cleared books ----------------------------------------------------


# A published result lists the hash prefixes (8 bytes each) of the orders
# its coordinator held at the gate, when they fit in an overlay record, so
# a disagreeing peer can tell which orders one side lacked, and repair.py
# which orders a quorum held. The list never changes after the gate; the
# hash changes when the book is repaired.
PREFIX_BYTES = 8
MAX_LISTED_ORDERS = 150


@dataclass(frozen=True)
class PublishedResult:
    peer: str
    hash: bytes
    orders: int
    prefixes: tuple[bytes, ...] | None  # held at the gate; None when the book was too big to list
    seq: int = 0  # the overlay record's sequence number (0 for bare bytes): newer replaces older


def prefixes_of(hashes: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(h[:PREFIX_BYTES] for h in hashes)


def encode_result(peer: str, cleared: ClearedInterval, held: Sequence[bytes] | None = None) -> bytes:
    """`held`: the prefixes of the orders held at the gate (default: the
    cleared book's orders)."""
    listed = prefixes_of(cleared.order_hashes) if held is None else tuple(held)
    m: dict[str, Any] = {"peer": peer, "hash": cleared.hash, "orders": len(listed)}
    if len(listed) <= MAX_LISTED_ORDERS:
        m["prefixes"] = b"".join(listed)
    return cbor2.dumps(m, canonical=True)


def _publisher(value: Any) -> str | None:
    """The signing publisher's id (as BaseOverlay.publisher_id names it) of
    an overlay record; None for bare bytes. One key, one voice: a result
    names its peer by who signed it, not by what it says."""
    pub = getattr(value, "publisher", None)
    return key_id(pub).hex() if isinstance(pub, (bytes, bytearray)) else None


def decode_result(value: Any) -> PublishedResult | None:
    try:
        m = cbor2.loads(value_bytes(value))
        peer = _publisher(value) or m["peer"]
        if not isinstance(m["hash"], bytes) or len(m["hash"]) != 32 or not isinstance(peer, str):
            raise ValueError("hash or peer of the wrong type")
        raw = m.get("prefixes")
        prefixes = None
        if isinstance(raw, bytes) and len(raw) % PREFIX_BYTES == 0:
            prefixes = tuple(raw[i:i + PREFIX_BYTES] for i in range(0, len(raw), PREFIX_BYTES))
        seq = getattr(value, "seq", 0)
        return PublishedResult(peer, m["hash"], int(m["orders"]), prefixes, seq if isinstance(seq, int) else 0)
    except Exception as e:  # a result from anyone: never let it raise
        log.info("cleared-book result ignored: %s (expected {peer, hash: 32 bytes, orders})", e)
        return None


def result_slot(interval_s: int) -> str:
    return f"result:{interval_s}"


async def publish_result(overlay: Overlay, peer: str, cleared: ClearedInterval,
                         held: Sequence[bytes] | None = None) -> bool:
    return await _put(overlay, result_key(cleared.zone, cleared.interval_start), encode_result(peer, cleared, held),
                      RESULT_TTL_S, result_slot(cleared.interval_s))


async def read_results(overlay: Overlay, zone: str, interval_start: int, interval_s: int,
                       into: dict[str, PublishedResult] | None = None) -> dict[str, PublishedResult]:
    """Every coordinator's published result for a book, by peer: the newest
    record of each signer in the result slot (other slots are ignored, so
    one key counts once). Merged `into` a view kept across reads, where a
    newer record replaces an older one and a lossy read forgets nothing."""
    out = {} if into is None else into
    slot = result_slot(interval_s)
    for v in await overlay.get(result_key(zone, interval_start)):
        if getattr(v, "slot", slot) != slot:
            continue
        r = decode_result(v)
        if r is None:
            continue
        old = out.get(r.peer)
        if old is None or r.seq >= old.seq:
            out[r.peer] = r
    return out


def our_peer_id(overlay: Overlay, peer: str) -> str:
    """How peers name us: our publisher id on a signing overlay, else `peer`."""
    return getattr(overlay, "publisher_id", None) or peer


def compare_results(cleared: ClearedInterval, me: str, results: Mapping[str, PublishedResult]) -> Comparison:
    theirs = {p: r.hash for p, r in results.items() if p != me}
    listed = {p: r.prefixes for p, r in results.items() if p != me and r.prefixes is not None}
    return compare_books(cleared, theirs, listed)


async def compare_with_peers(overlay: Overlay, peer: str, cleared: ClearedInterval) -> Comparison:
    """Read the other coordinators' published hashes for this book and
    compare (disagreements are logged by compare_books). On an overlay that
    signs records, peers are named by their publisher ids (ours included,
    whatever `peer` says); on a bare one by the ids they published."""
    results = await read_results(overlay, cleared.zone, cleared.interval_start, cleared.interval_s)
    return compare_results(cleared, our_peer_id(overlay, peer), results)
