"""An in-memory overlay with the same interface as the OpenDHT one.

For unit tests of what sits above the overlay (directory, market
publication): several MemoryOverlay instances on one MemoryNetwork see each
other's records at once, with the same signing, verification, expiry and
supersession rules as on real nodes. Values are stored as raw bytes, so
tests can also write forged ones with `put_raw`, as an attacker would.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from bitcoinx import PrivateKey

from . import records
from .interface import Accept, AcceptPublisher, BaseOverlay, ListenHandle, PeerInfo, RawSink


class MemoryNetwork:
    """The shared store: key -> {raw bytes: (stored until, user_type)}, in
    the order stored (as an OpenDHT node keeps them)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.values: dict[str, dict[bytes, tuple[float, str]]] = {}
        self.members: list["MemoryOverlay"] = []
        self.listeners: dict[str, list[tuple["MemoryOverlay", ListenHandle]]] = {}

    def store(self, key: str, raw: bytes, ttl_s: int, tag: str = "") -> None:
        now = self.clock()
        stored = self.values.setdefault(key, {})
        stored.pop(raw, None)
        stored[raw] = (now + ttl_s, tag)
        if len(stored) % 1024 == 0:  # drop the expired now and then
            for r in [r for r, (t, _g) in stored.items() if t <= now]:
                del stored[r]
        for member, handle in list(self.listeners.get(key, [])):
            if handle.cancelled or not member.running:
                self.listeners[key].remove((member, handle))
                continue
            member._post(handle._deliver_raw, raw)

    def load(self, key: str, tag: str | None = None) -> list[bytes]:
        """Live values under `key`; with `tag`, only those of that user_type
        (as OpenDHT's storing nodes filter on `Where user_type=`)."""
        now = self.clock()
        return [r for r, (t, g) in self.values.get(key, {}).items() if t > now and (tag is None or g == tag)]


class MemoryOverlay(BaseOverlay):
    def __init__(self, signing_key: PrivateKey, network: MemoryNetwork, *,
                 clock: Callable[[], float] | None = None, accept: Accept | None = None,
                 accept_publisher: AcceptPublisher | None = None, shards: int | None = None) -> None:
        super().__init__(signing_key, clock or network.clock, accept, accept_publisher,
                         1 if shards is None else shards)
        self.network = network
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.running = True
        if self not in self.network.members:
            self.network.members.append(self)

    async def stop(self) -> None:
        self.running = False
        if self in self.network.members:
            self.network.members.remove(self)

    def peers(self) -> list[PeerInfo]:
        return [PeerInfo(m.publisher_id, f"memory:{i}") for i, m in enumerate(self.network.members) if m is not self]

    async def _put_raw(self, key: str, data: bytes, ttl_s: int, tag: str = "") -> bool:
        if not 1 <= ttl_s <= records.MAX_TTL_S:
            raise records.RecordError(f"ttl_s={ttl_s!r} for {key!r}: expected an integer in 1..{records.MAX_TTL_S}")
        self.network.store(key, data, ttl_s, tag)
        return True

    async def _stream(self, key: str, tag: str | None, sink: RawSink, stop: asyncio.Event,
                      timeout_s: float) -> None:
        await asyncio.sleep(0)
        for i, raw in enumerate(self.network.load(key, tag)):
            if stop.is_set() or not self.running:
                return
            if len(raw) <= records.MAX_RECORD_BYTES:
                sink(raw)
            if i % 256 == 255:
                await asyncio.sleep(0)  # let a flooded read's publisher reads run beside it

    def _listen_raw(self, key: str, handle: ListenHandle) -> None:
        self.network.listeners.setdefault(key, []).append((self, handle))
        for raw in self.network.load(key):
            if len(raw) <= records.MAX_RECORD_BYTES:
                self._post(handle._deliver_raw, raw)

    def _post(self, fn: Callable[[bytes], None], raw: bytes) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, raw)
