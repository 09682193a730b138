"""The overlay interface the rest of the coordinator codes against.

Two implementations share everything above the engine (signing, sequence
numbers, verification, supersession, listen bookkeeping):
- engine.Overlay: real OpenDHT nodes (the only module importing opendht);
- memory.MemoryOverlay: an in-process dictionary, for unit tests of the
  packages above (directory, market publication).

All methods are called from one asyncio event loop; listen callbacks run on
that loop too, never on an engine thread.

Reads that floods cannot starve (issue 15): anyone can store any number of
values under any key, and an OpenDHT get hands them all over, so
- every value is judged as it arrives (records.Selector): no cut on the
  number of raw values or records that an attacker could fill first;
- a read for named publishers (`get(key, publishers=[...])`) asks the storing
  nodes for those publishers' values only (OpenDHT `Where user_type=` on
  records.publisher_tag): junk and other publishers' values never travel;
  one publisher's read returns as soon as its newest record arrived
  (FIRST_GRACE_S after the first valid one) instead of waiting for the
  whole search;
- an open read (`get(key)`) that meets a flood (FLOOD_INVALID values that do
  not verify) asks, beside it, for every publisher the reader has accepted
  before or was told to expect (`expect()`), so known publishers are found
  however many values sit under the key;
- newest versions are remembered per (key, publisher, slot)
  (records.ReplayGuard): an old version replayed, or the newest one lost,
  never makes an older record current again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterable

from bitcoinx import PrivateKey

from . import keys as shard_keys, records
from .records import SignedRecord

log = logging.getLogger("microgrid.overlay")

RecordCallback = Callable[[SignedRecord], None]
Accept = Callable[[SignedRecord], bool]
AcceptPublisher = Callable[[bytes], bool]
# Called on the event loop with each raw value found; returns False to end
# the read early.
RawSink = Callable[[bytes], None]

# After the first valid record of a publisher asked for by name, wait this
# long for more of its records (other slots, a newer version from a slower
# node), then return without waiting for the whole search.
FIRST_GRACE_S = 0.15
# Values that fail to verify in one open read before it counts as flooded
# and the known publishers are asked for by name.
FLOOD_INVALID = 64
# Publisher reads running at once (each is one OpenDHT get with a filter).
PUBLISHER_READS_AT_ONCE = 64
# Publishers remembered as known (accepted before, or expected).
MAX_KNOWN_PUBLISHERS = 20000


class Stop(asyncio.Event):
    """An asyncio.Event that also calls back synchronously when set: a read
    waiting on an engine future is woken by the same loop iteration that
    sets it, with no task spawned to wait on the event (each extra task or
    loop iteration costs a GIL hand-over when a process runs many engine
    threads: measured, the bulk of the overlay's overhead per lookup)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        if self.is_set():
            return
        super().set()
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb()

    def on_set(self, cb: Callable[[], None]) -> None:
        """Call `cb()` when set (at once if already set)."""
        if self.is_set():
            cb()
        else:
            self._callbacks.append(cb)


class OverlayError(RuntimeError):
    """The overlay could not start, or was used while stopped."""


@dataclass(frozen=True)
class PeerInfo:
    node_id: str  # engine node id, hex
    address: str  # "127.0.0.1:4222", "[::1]:4222", "memory:3"
    status: str = "good"  # "good", "dubious", "expired" (engine's view)


class ListenHandle:
    """A running listen. `cancel()` stops deliveries at once; the engine
    drops its side of the listen the next time it calls back (see
    engine.py: cancelListen is never used)."""

    def __init__(self, overlay: "BaseOverlay", key: str, callback: RecordCallback) -> None:
        self.key = key
        self._overlay = overlay
        self._callback = callback
        self._last: dict[tuple[bytes, str], int] = {}
        self.cancelled = False
        self.delivered = 0
        self.shards: list[ListenHandle] = []  # a sharded key: one listen per shard

    def cancel(self) -> None:
        self.cancelled = True
        for sub in self.shards:
            sub.cancel()

    def _deliver_raw(self, raw: bytes) -> None:
        """On the event loop: verify one value and call back if it is new."""
        if self.cancelled or not self._overlay.running:
            return
        recs = self._overlay._select([raw], self.key)
        for rec in recs:
            self._overlay.replay.remember(rec)
            if records.newer(rec, self._last):
                if not self._overlay._listen_budget(rec.publisher):
                    continue
                self.delivered += 1
                try:
                    self._callback(rec)
                except Exception:
                    log.exception("listen callback for %r failed", self.key)


class BaseOverlay(ABC):
    """Signed publish/lookup over some engine. Subclasses provide the raw
    put/get/listen of bytes and the peer list."""

    def __init__(self, signing_key: PrivateKey, clock: Callable[[], float] = time.time,
                 accept: Accept | None = None, accept_publisher: AcceptPublisher | None = None,
                 shards: int = 1) -> None:
        if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= shard_keys.MAX_SHARDS:
            raise ValueError(f"shards={shards!r}: expected an integer in 1..{shard_keys.MAX_SHARDS}")
        # Keys per per-interval name (keys.py); the same for a whole zone.
        self.shards = shards
        self.signing_key = signing_key
        self.public_key = signing_key.public_key.to_bytes(compressed=True)
        self.clock = clock
        # accept(record) and accept_publisher(public key) -> bool: e.g. a
        # zone's membership; the second is asked before any signature check.
        self.accept = accept
        self.accept_publisher = accept_publisher
        self.running = False
        self._last_seq = 0
        self.counts = {"put": 0, "put_failed": 0, "get": 0, "rejected": 0, "listen": 0, "rate_limited": 0,
                       "publisher_reads": 0, "flooded_reads": 0, "replays": 0}
        self.replay = records.ReplayGuard()
        # Publishers whose records we accepted or were told to expect: asked
        # for by name when an open read meets a flood. Insertion-ordered,
        # the oldest forgotten first.
        self.known: dict[bytes, None] = {}
        self.expected: dict[bytes, None] = {}
        # publisher -> (tokens, at): what it may still have delivered to
        # listeners (records.LISTEN_BURST, LISTEN_RATE_PER_S).
        self._budgets: dict[bytes, tuple[float, float]] = {}

    @property
    def publisher_id(self) -> str:
        return records.key_id(self.public_key).hex()

    # -- the interface -------------------------------------------------

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    def peers(self) -> list[PeerInfo]: ...

    async def put(self, key: str, value: bytes, ttl_s: int, *, slot: str = "", store_s: int | None = None) -> bool:
        """Sign `value` as a record under `key`, living `ttl_s` seconds, and
        publish it. A later put with the same slot supersedes this one for
        readers. True when the engine confirmed storage on other nodes.
        Raises records.RecordError for a value readers would refuse.

        `store_s` (1..ttl_s): how long the storing nodes keep this version,
        when shorter than its life: for records republished often (live
        totals), whose older versions would otherwise pile up under the key
        and travel with every read (OpenDHT keeps each version as a value
        of its own, README.md "Versions"). Readers keep the newest they saw
        (records.ReplayGuard) until `ttl_s`."""
        self._require_running("put")
        if store_s is not None and (isinstance(store_s, bool) or not isinstance(store_s, int)
                                    or not 1 <= store_s <= ttl_s):
            raise records.RecordError(f"store_s={store_s!r} for {key!r}: expected an integer in 1..ttl_s ({ttl_s})")
        key = shard_keys.key_for(key, self.public_key, self.shards)
        raw = self.sign(key, value, ttl_s, slot=slot)
        ok = await self._put_raw(key, raw, ttl_s if store_s is None else store_s, records.publisher_tag(self.public_key))
        self.counts["put" if ok else "put_failed"] += 1
        return ok

    def sign(self, key: str, value: bytes, ttl_s: int, *, slot: str = "") -> bytes:
        """`value` as the signed record `put` would publish under `key` (the
        key name as given: no shard suffix), with this publisher's next
        sequence number: for records handed over another way (live totals
        fetched from our coordinator, trading/live.py)."""
        now = self.clock()
        return records.sign(self.signing_key, key, bytes(value), self._next_seq(now), int(now), ttl_s, slot)

    async def put_raw(self, key: str, data: bytes, ttl_s: int, tag: str = "") -> bool:
        """Publish bytes as they are, unsigned, with any OpenDHT user_type
        `tag`: what any other writer can do. For tests and the simulation
        harness only."""
        self._require_running("put_raw")
        return await self._put_raw(key, bytes(data), ttl_s, tag)

    def expect(self, publishers: Iterable[bytes]) -> None:
        """Publishers to ask for by name when an open read is flooded (a
        zone's configured members, the traders of a cleared book); kept
        until forgotten with `expect_only`, never crowded out."""
        for p in publishers:
            self.expected[bytes(p)] = None

    def expect_only(self, publishers: Iterable[bytes]) -> None:
        """Replace the expected publishers (membership changed)."""
        self.expected = dict.fromkeys(bytes(p) for p in publishers)

    def _candidates(self, key: str) -> list[bytes]:
        """Who to ask for by name under `key` when an open read is flooded:
        the expected publishers and those seen in calm reads, for a shard
        key only those whose shard it is."""
        pubs = list(dict.fromkeys(list(self.expected) + list(self.known)))
        if self.shards > 1 and shard_keys.is_sharded(key):
            base, _, shard = key.rpartition("/")
            if shard.isdigit():
                pubs = [p for p in pubs if shard_keys.key_for(base, p, self.shards) == key]
        return pubs

    def _know(self, publisher: bytes) -> None:
        self.known.pop(publisher, None)
        self.known[publisher] = None
        if len(self.known) > MAX_KNOWN_PUBLISHERS:
            del self.known[next(iter(self.known))]

    async def get(self, key: str, timeout_s: float | None = None, *,
                  publishers: Iterable[bytes] | None = None) -> list[SignedRecord]:
        """Every valid, live, newest-per-slot record under `key`, found
        within `timeout_s` (the settings' default when None). With
        `publishers`, only theirs, each asked for by name (fast, and immune
        to floods of other values); a single publisher's read returns as
        soon as its newest record arrived."""
        self._require_running("get")
        if self.shards > 1 and shard_keys.is_sharded(key):
            return await self._get_sharded(key, timeout_s, publishers)
        return await self._get_key(key, timeout_s, publishers)

    async def _get_key(self, key: str, timeout_s: float | None,
                       publishers: Iterable[bytes] | None) -> list[SignedRecord]:
        self.counts["get"] += 1
        timeout = self._timeout(timeout_s)
        sel = records.Selector(key, self.clock(), self.accept, self._rejected, self.accept_publisher)
        named = None if publishers is None else list(dict.fromkeys(bytes(p) for p in publishers))
        if named is not None:
            await self._read_publishers(key, named, sel, timeout)
        else:
            await self._read_open(key, sel, timeout)
        found = sel.records()
        before = self.replay.replays
        out = self.replay.merge(key, found, self.clock(), self._keeps)
        self.counts["replays"] += self.replay.replays - before
        if named is not None:
            wanted = set(named)
            out = [r for r in out if r.publisher in wanted]
        if sel.invalid < FLOOD_INVALID:
            # Only calm reads teach us publishers: in a flooded one an
            # attacker's many keys could crowd the honest ones out.
            for r in found:
                self._know(r.publisher)
        return out

    async def _get_sharded(self, base: str, timeout_s: float | None,
                           publishers: Iterable[bytes] | None) -> list[SignedRecord]:
        """Every shard of `base` at once (for named publishers, theirs only)."""
        if publishers is None:
            reads = [self._get_key(k, timeout_s, None) for k in shard_keys.all_keys(base, self.shards)]
        else:
            by_key: dict[str, list[bytes]] = {}
            for p in list(publishers):
                by_key.setdefault(shard_keys.key_for(base, bytes(p), self.shards), []).append(bytes(p))
            reads = [self._get_key(k, timeout_s, ps) for k, ps in by_key.items()]
        out: list[SignedRecord] = []
        for part in await asyncio.gather(*reads):
            out.extend(part)
        return sorted(out, key=lambda r: (r.publisher, r.slot))

    def _keeps(self, rec: SignedRecord) -> bool:
        if self.accept_publisher is not None and not self.accept_publisher(rec.publisher):
            return False
        return self.accept is None or self.accept(rec)

    async def _read_open(self, key: str, sel: records.Selector, timeout: float) -> None:
        """Everything under `key`; once flooded, the known publishers by
        name beside it, and done when they are."""
        done = Stop()
        flooded: list[asyncio.Task[None]] = []

        def sink(raw: bytes) -> None:
            if done.is_set():
                return
            sel.offer(raw)
            if not flooded and sel.invalid >= FLOOD_INVALID:
                # The open read is abandoned: under a flood it would take
                # seconds per thousand values, and while it pages them the
                # engine's search for the key is not done, which keeps the
                # publisher reads below from ending too.
                done.set()
                self.counts["flooded_reads"] += 1
                missing = [p for p in self._candidates(key) if not sel.has(p)]
                log.info("overlay read of %r flooded (%d values refused): asking %d known publishers by name",
                         key, sel.invalid, len(missing))
                flooded.append(asyncio.create_task(self._read_publishers(key, missing, sel, timeout)))

        await self._stream(key, None, sink, done, timeout)
        if flooded:
            await flooded[0]

    async def _read_publishers(self, key: str, pubs: list[bytes], sel: records.Selector, timeout: float) -> None:
        gate = asyncio.Semaphore(PUBLISHER_READS_AT_ONCE)
        deadline = asyncio.get_running_loop().time() + timeout

        async def one(pub: bytes) -> None:
            async with gate:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0 or not self.running:
                    return
                self.counts["publisher_reads"] += 1
                enough = Stop()
                timer: list[asyncio.TimerHandle] = []

                def sink(raw: bytes) -> None:
                    rec = sel.offer(raw, priority=True)
                    if rec is not None and rec.publisher == pub and not timer:
                        timer.append(asyncio.get_running_loop().call_later(FIRST_GRACE_S, enough.set))

                try:
                    await self._stream(key, records.publisher_tag(pub), sink, enough, left)
                finally:
                    for t in timer:
                        t.cancel()

        if len(pubs) == 1:  # the common case (a directory lookup): no gather
            await one(pubs[0])
        else:
            await asyncio.gather(*(one(p) for p in pubs))

    def listen(self, key: str, callback: RecordCallback) -> ListenHandle:
        """Call `callback(record)` on the event loop for each valid record
        under `key`, the ones already there included, each newer version of
        a (publisher, slot) once. Returns a handle with `.cancel()`."""
        self._require_running("listen")
        handle = ListenHandle(self, key, callback)
        keys = shard_keys.all_keys(key, self.shards)
        if len(keys) == 1:
            self.counts["listen"] += 1
            self._listen_raw(key, handle)
            return handle
        for k in keys:
            sub = ListenHandle(self, k, callback)
            self.counts["listen"] += 1
            self._listen_raw(k, sub)
            handle.shards.append(sub)
        return handle

    # -- for subclasses --------------------------------------------------

    @abstractmethod
    async def _put_raw(self, key: str, data: bytes, ttl_s: int, tag: str) -> bool: ...

    @abstractmethod
    async def _stream(self, key: str, tag: str | None, sink: RawSink, stop: asyncio.Event,
                      timeout_s: float) -> None:
        """Feed `sink` on the event loop with each value found under `key`
        (only those whose user_type is `tag`, when given) until the search
        ends, `stop` is set or `timeout_s` passed. Values larger than
        records.MAX_RECORD_BYTES are dropped before they reach Python."""

    def _timeout(self, timeout_s: float | None) -> float:
        return 5.0 if timeout_s is None else timeout_s

    async def _get_raw(self, key: str, timeout_s: float | None) -> list[bytes]:
        """Every raw value under `key` (tests, diagnostics)."""
        found: list[bytes] = []
        await self._stream(key, None, found.append, Stop(), self._timeout(timeout_s))
        return found

    @abstractmethod
    def _listen_raw(self, key: str, handle: ListenHandle) -> None: ...

    def _select(self, raws: list[bytes], key: str) -> list[SignedRecord]:
        return records.select(raws, key, self.clock(), self.accept, self._rejected, self.accept_publisher)

    def _rejected(self, why: str) -> None:
        self.counts["rejected"] += 1
        log.debug("overlay record dropped: %s", why)

    def _listen_budget(self, publisher: bytes) -> bool:
        """Take one listen delivery from `publisher`'s budget; False (and
        the record dropped) once it publishes faster than the limit."""
        now = self.clock()
        tokens, at = self._budgets.get(publisher, (float(records.LISTEN_BURST), now))
        tokens = min(float(records.LISTEN_BURST), tokens + max(0.0, now - at) * records.LISTEN_RATE_PER_S)
        if tokens < 1.0:
            self._budgets[publisher] = (tokens, now)
            self.counts["rate_limited"] += 1
            if self.counts["rate_limited"] % 100 == 1:
                log.warning("publisher %s exceeds %d records then %.0f/s to our listeners: dropping "
                            "(%d dropped so far, from all publishers)", records.key_id(publisher).hex(),
                            records.LISTEN_BURST, records.LISTEN_RATE_PER_S, self.counts["rate_limited"])
            return False
        self._budgets[publisher] = (tokens - 1.0, now)
        if len(self._budgets) > 4096:  # forget the publishers that are full again
            full = [p for p, (t, _a) in self._budgets.items() if t >= records.LISTEN_BURST - 1]
            for p in full[:2048]:
                del self._budgets[p]
        return True

    def _next_seq(self, now: float) -> int:
        # Milliseconds since the epoch: increasing across restarts without
        # storing anything, strictly increasing within a run.
        self._last_seq = max(self._last_seq + 1, int(now * 1000))
        return self._last_seq

    def _require_running(self, what: str) -> None:
        if not self.running:
            raise OverlayError(f"overlay {what}: the overlay is not running (start() it first)")
