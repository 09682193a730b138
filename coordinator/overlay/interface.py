"""The overlay interface the rest of the coordinator codes against.

Two implementations share everything above the engine (signing, sequence
numbers, verification, supersession, listen bookkeeping):
- engine.Overlay: real OpenDHT nodes (the only module importing opendht);
- memory.MemoryOverlay: an in-process dictionary, for unit tests of the
  packages above (directory, market publication).

All methods are called from one asyncio event loop; listen callbacks run on
that loop too, never on an engine thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

from bitcoinx import PrivateKey

from . import records
from .records import SignedRecord

log = logging.getLogger("microgrid.overlay")

RecordCallback = Callable[[SignedRecord], None]
Accept = Callable[[SignedRecord], bool]


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

    def cancel(self) -> None:
        self.cancelled = True

    def _deliver_raw(self, raw: bytes) -> None:
        """On the event loop: verify one value and call back if it is new."""
        if self.cancelled or not self._overlay.running:
            return
        recs = self._overlay._select([raw], self.key)
        for rec in recs:
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
                 accept: Accept | None = None) -> None:
        self.signing_key = signing_key
        self.public_key = signing_key.public_key.to_bytes(compressed=True)
        self.clock = clock
        self.accept = accept
        self.running = False
        self._last_seq = 0
        self.counts = {"put": 0, "put_failed": 0, "get": 0, "rejected": 0, "listen": 0, "rate_limited": 0}
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

    async def put(self, key: str, value: bytes, ttl_s: int, *, slot: str = "") -> bool:
        """Sign `value` as a record under `key`, living `ttl_s` seconds, and
        publish it. A later put with the same slot supersedes this one for
        readers. True when the engine confirmed storage on other nodes.
        Raises records.RecordError for a value readers would refuse."""
        self._require_running("put")
        now = self.clock()
        raw = records.sign(self.signing_key, key, bytes(value), self._next_seq(now), int(now), ttl_s, slot)
        ok = await self._put_raw(key, raw, ttl_s)
        self.counts["put" if ok else "put_failed"] += 1
        return ok

    async def put_raw(self, key: str, data: bytes, ttl_s: int) -> bool:
        """Publish bytes as they are, unsigned: what any other writer can do.
        For tests and the simulation harness only."""
        self._require_running("put_raw")
        return await self._put_raw(key, bytes(data), ttl_s)

    async def get(self, key: str, timeout_s: float | None = None) -> list[SignedRecord]:
        """Every valid, live, newest-per-slot record under `key`, found
        within `timeout_s` (the settings' default when None)."""
        self._require_running("get")
        self.counts["get"] += 1
        raws = await self._get_raw(key, timeout_s)
        return self._select(raws, key)

    def listen(self, key: str, callback: RecordCallback) -> ListenHandle:
        """Call `callback(record)` on the event loop for each valid record
        under `key`, the ones already there included, each newer version of
        a (publisher, slot) once. Returns a handle with `.cancel()`."""
        self._require_running("listen")
        handle = ListenHandle(self, key, callback)
        self.counts["listen"] += 1
        self._listen_raw(key, handle)
        return handle

    # -- for subclasses --------------------------------------------------

    @abstractmethod
    async def _put_raw(self, key: str, data: bytes, ttl_s: int) -> bool: ...

    @abstractmethod
    async def _get_raw(self, key: str, timeout_s: float | None) -> list[bytes]: ...

    @abstractmethod
    def _listen_raw(self, key: str, handle: ListenHandle) -> None: ...

    def _select(self, raws: list[bytes], key: str) -> list[SignedRecord]:
        return records.select(raws, key, self.clock(), self.accept, self._rejected)

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
