"""The in-memory overlay with delay and loss, on simulated time, for tests
of what must survive a slow, lossy network (book repair).

- `VirtualTime`: a clock many coroutines share. `sleep(s)` waits until
  the clock reaches now + s; `drive(...)` runs coroutines and, whenever
  they are all waiting, moves the clock to the next wake-up. No real
  time passes, so the test is as fast on a loaded CI machine as here.
- `LossyNetwork` / `LossyOverlay`: MemoryNetwork and MemoryOverlay (the
  same signing, verification and supersession) where every delivery to
  a reader arrives `delay_s` +- `jitter_s` after the put, and a fraction
  `loss` of deliveries is lost: a listen callback, or a value in one get
  (the next get may return it). Which ones is decided by hashing (seed,
  reader, record[, get number]), so a seed always gives the same run,
  whatever order the event loop runs things in. `hide(reader, raw)` makes
  chosen values never reach a reader (a partition, for tests that need
  a repair to fail).

Kept in tests/ on purpose: the product overlay (coordinator/overlay/) has
no reason to drop records.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
from typing import Any, Awaitable, Callable

from bitcoinx import PrivateKey

from microgrid.coordinator.overlay.interface import ListenHandle
from microgrid.coordinator.overlay.memory import MemoryNetwork, MemoryOverlay


class VirtualTime:
    def __init__(self, t: float) -> None:
        self.t = float(t)
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._n = 0

    def now(self) -> float:
        return self.t

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, self._n, fn))
        self._n += 1

    async def sleep(self, s: float) -> None:
        if s <= 0:
            await asyncio.sleep(0)
            return
        fut = asyncio.get_running_loop().create_future()
        self.call_at(self.t + s, lambda: None if fut.done() else fut.set_result(None))
        await fut

    async def drive(self, *aws: Awaitable[Any], yields: int = 40, max_steps: int = 200_000) -> list[Any]:
        """Run `aws` to completion on simulated time; their results."""
        tasks = [asyncio.ensure_future(a) for a in aws]
        for _ in range(max_steps):
            for _ in range(yields):  # let everything runnable run
                await asyncio.sleep(0)
                if all(t.done() for t in tasks):
                    return [t.result() for t in tasks]
            if not self._timers:
                raise RuntimeError("every task waits and no timer is due: a real sleep or a deadlock")
            self.t = max(self.t, self._timers[0][0])
            while self._timers and self._timers[0][0] <= self.t:
                heapq.heappop(self._timers)[2]()
        raise RuntimeError(f"not done after {max_steps} steps of simulated time")


class LossyNetwork(MemoryNetwork):
    def __init__(self, vt: VirtualTime, seed: int, delay_s: float = 0.5, jitter_s: float = 0.25,
                 loss: float = 0.05) -> None:
        super().__init__(vt.now)
        self.vt = vt
        self.seed = seed
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.loss = loss
        self.put_at: dict[bytes, float] = {}
        self.hide: Callable[[str, bytes], bool] = lambda reader, raw: False
        self.lost = 0
        self.delivered = 0

    def _u(self, *parts: Any) -> float:
        """A number in [0, 1) fixed by the seed and `parts`."""
        h = hashlib.sha256(repr((self.seed,) + parts).encode()).digest()
        return int.from_bytes(h[:8], "big") / 2.0**64

    def arrives_at(self, reader: str, raw: bytes) -> float:
        return self.put_at.get(raw, 0.0) + self.delay_s + self.jitter_s * (2 * self._u("delay", reader, raw) - 1)

    def _lost(self, *parts: Any) -> bool:
        lost = self._u("loss", *parts) < self.loss
        self.lost += lost
        self.delivered += not lost
        return lost

    def store(self, key: str, raw: bytes, ttl_s: int, tag: str = "") -> None:
        now = self.clock()
        stored = self.values.setdefault(key, {})
        stored.pop(raw, None)
        stored[raw] = (now + ttl_s, tag)
        self.put_at[raw] = now
        for member, handle in list(self.listeners.get(key, [])):
            if handle.cancelled or not member.running:
                self.listeners[key].remove((member, handle))
                continue
            reader = member.publisher_id
            if self.hide(reader, raw) or self._lost("listen", reader, raw):
                continue

            def deliver(member: MemoryOverlay = member, handle: ListenHandle = handle) -> None:
                if member.running:
                    handle._deliver_raw(raw)
            self.vt.call_at(self.arrives_at(reader, raw), deliver)

    def load_for(self, reader: "LossyOverlay", key: str, tag: str | None = None) -> list[bytes]:
        reader.gets += 1
        now = self.clock()
        rid = reader.publisher_id
        return [r for r in self.load(key, tag)
                if self.arrives_at(rid, r) <= now and not self.hide(rid, r)
                and not self._lost("get", rid, r, reader.gets)]


class LossyOverlay(MemoryOverlay):
    network: LossyNetwork

    def __init__(self, signing_key: PrivateKey, network: LossyNetwork) -> None:
        super().__init__(signing_key, network)
        self.gets = 0

    async def _stream(self, key: str, tag: str | None, sink: Callable[[bytes], None], stop: asyncio.Event,
                      timeout_s: float) -> None:
        await asyncio.sleep(0)
        for raw in self.network.load_for(self, key, tag):
            if stop.is_set() or not self.running:
                return
            sink(raw)

    def _listen_raw(self, key: str, handle: ListenHandle) -> None:
        self.network.listeners.setdefault(key, []).append((self, handle))
        for raw in self.network.load_for(self, key):
            self._post(handle._deliver_raw, raw)
