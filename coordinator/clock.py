"""Time for the coordinator's cores, passed in rather than read.

A `Clock` is anything with `now() -> float` (Unix seconds). On a Pi it is
the system clock; in the demo it is a `ScaledClock` running many times
faster than real time, shared by every coordinator and (through the same
origin and speed in their config) every meter.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ScaledClock:
    """Simulated time: `start` at real time `origin`, advancing `speed`
    simulated seconds per real second."""

    def __init__(self, start: float, speed: float, origin: float | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"clock speed must be positive, got {speed}")
        self.start = start
        self.speed = speed
        self.origin = time.time() if origin is None else origin

    def now(self) -> float:
        return self.start + (time.time() - self.origin) * self.speed

    def real_seconds(self, simulated: float) -> float:
        """Real seconds that `simulated` seconds take."""
        return simulated / self.speed


async def sleep_until(clock: Clock, t: float, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
    """Wait until clock.now() reaches t. A scaled clock is waited on in its
    real seconds; the loop re-reads the clock, so it follows any clock."""
    while (left := t - clock.now()) > 0:
        real = getattr(clock, "real_seconds", None)
        await sleep(real(left) if real else left)


async def wait_or_stop(waiting: Awaitable[Any], stop: asyncio.Event) -> bool:
    """Wait for `waiting` (a sleep, usually) or for `stop`, whichever comes
    first, and cancel the other; True when stopped. The service loops wait
    their next time this way, so a stop never waits out a long sleep."""
    waiter = asyncio.ensure_future(waiting)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    stopper.cancel()
    return stop.is_set()
