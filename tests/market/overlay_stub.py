"""A tiny in-memory overlay with the market's interface (put/get/listen of
bytes), and a clock the tests move by hand. Several StubOverlay instances on
one StubNetwork see each other's values; listen callbacks run on the event
loop, as on the real overlay."""

from __future__ import annotations

import asyncio
from typing import Any, Callable


class ManualClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.t += s
        await asyncio.sleep(0)


class StubNetwork:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.values: dict[str, dict[tuple[str, str], tuple[bytes, float]]] = {}
        self.listeners: dict[str, list[Callable[[bytes], None]]] = {}


class Handle:
    def __init__(self, net: StubNetwork, key: str, cb: Callable[[bytes], None]) -> None:
        self.net, self.key, self.cb = net, key, cb

    def cancel(self) -> None:
        if self.cb in self.net.listeners.get(self.key, []):
            self.net.listeners[self.key].remove(self.cb)


class StubOverlay:
    def __init__(self, net: StubNetwork, name: str) -> None:
        self.net = net
        self.name = name
        self.puts = 0

    async def put(self, key: str, value: bytes, ttl_s: int) -> bool:
        assert isinstance(value, bytes) and ttl_s >= 1
        self.puts += 1
        # Same publisher, same value: one entry (as a DHT stores values by id).
        self.net.values.setdefault(key, {})[(self.name, value.hex())] = (value, self.net.clock.now() + ttl_s)
        loop = asyncio.get_running_loop()
        for cb in list(self.net.listeners.get(key, [])):
            loop.call_soon(cb, value)
        return True

    async def get(self, key: str) -> list[bytes]:
        await asyncio.sleep(0)
        now = self.net.clock.now()
        return [v for v, until in self.net.values.get(key, {}).values() if until > now]

    def listen(self, key: str, callback: Callable[[Any], None]) -> Handle:
        self.net.listeners.setdefault(key, []).append(callback)
        loop = asyncio.get_running_loop()
        now = self.net.clock.now()
        for v, until in self.net.values.get(key, {}).values():
            if until > now:
                loop.call_soon(callback, v)
        return Handle(self.net, key, callback)
