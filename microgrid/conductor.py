"""Simulated time that waits for the slowest participant.

The demo's clock used to run at a fixed speed against the wall clock, so
what a coordinator saw at an instant depended on how far the meters and
the other coordinators had got: a busy or slow machine changed the trades.
The conductor instead moves simulated time only when every participant has
finished what the current instant asks of it:

- a coordinator's timed work (market rounds, stream polls, settlements:
  every `sleep_until` of trading/ and market/) parks on the conductor with
  a wake-up time (`sleeper(rank)`), and is woken in a fixed order (time,
  coordinator, order of parking), one task at a time, each running until it
  parks again and nothing it started is still on the network (`busy()`
  wraps the overlay's and the channels' requests);
- a MicroPython meter (real process, real CoAP) runs on the scripted HAL's
  virtual time and asks over loopback UDP before sleeping past what it was
  granted (`METER_SHIM`, written into its image folder): "W name ms" (the
  virtual ms since boot it wants to sleep until), answered "G ms" (it may
  run up to there).

Each step: the meters run up to the horizon H = now + `lookahead_s` (every
reading stamped at or before H is then stored: it is acknowledged only
after its row is committed); then the coordinator tasks due up to H run,
in order, one at a time, the clock set to each one's wake-up. A reading
stamped after a coordinator's instant is already stored when it looks, but
what it reads is bounded by time (trading/metering.py), and the ingest
takes readings up to `max_future_s` ahead, which must exceed `lookahead_s`.
Meters thus work in parallel for a whole step, coordinators in turn. Nothing waits on the wall clock, so the same seed gives the
same trades on any machine; a slow machine takes longer instead.
`ceiling_speed` keeps simulated time from running ahead of that many
simulated seconds per real second (a demo to watch).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

log = logging.getLogger("microgrid.conductor")


class ConductedClock:
    """A `Clock` (coordinator/clock.py) reading the conductor's instant."""

    def __init__(self, conductor: "Conductor") -> None:
        self.conductor = conductor

    def now(self) -> float:
        return self.conductor.now


@dataclass
class _Meter:
    name: str
    alive: Callable[[], bool]
    target_ms: int | None = None  # waiting to sleep until this; None: running
    addr: Any = None
    offset_ms: int = 0  # its virtual 0 (boot) in ms after the conductor's start


class _MeterGate(asyncio.DatagramProtocol):
    def __init__(self, conductor: "Conductor") -> None:
        self.conductor = conductor
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            kind, name, ms = data.decode().split()
            if kind != "W":
                raise ValueError(kind)
            self.conductor.meter_waits(name, int(ms), addr)
        except (ValueError, UnicodeError) as e:
            log.warning("conductor: ignored %r from %s (%s)", data[:40], addr, e)

    def grant(self, addr: Any, ms: int) -> None:
        if self.transport is not None:
            self.transport.sendto(b"G %d" % ms, addr)


class Conductor:
    def __init__(self, start: float, ceiling_speed: float | None = None, lookahead_s: float = 300.0,
                 stall_s: float = 300.0) -> None:
        self.start = float(start)
        self.now = float(start)
        self.ceiling_speed = ceiling_speed
        self.lookahead_s = lookahead_s
        self.granted_ms = 0  # meters may run to this (virtual ms since start)
        self.stall_s = stall_s
        self.inflight = 0
        self.phase_s = {"meters": 0.0, "coordinators": 0.0}  # real seconds waited for each side
        self.waits: dict[str, tuple[int, float]] = {}  # wrapped call -> (calls, real seconds)
        self.steps = 0
        self.stalls = 0
        self._sleepers: list[tuple[float, int, int, asyncio.Future[None]]] = []
        # Times a step must end at: the meters stop there before the
        # coordinators' instant (a scripted power cut happens at a reading).
        self.barriers: list[float] = []
        self._seq = itertools.count()
        self._meters: dict[str, _Meter] = {}
        self._changed: asyncio.Event | None = None
        self._gate: _MeterGate | None = None
        self.port = 0
        self._real_start = 0.0

    # -- coordinators --------------------------------------------------------

    def clock(self) -> ConductedClock:
        return ConductedClock(self)

    def sleeper(self, rank: int) -> Callable[[float], Awaitable[None]]:
        """A `sleep(seconds)` for coordinator `rank` in simulated seconds:
        what trading/ and market/ take as `sleep`."""
        async def sleep(seconds: float) -> None:
            await self.sleep(seconds, rank)
        return sleep

    async def sleep(self, seconds: float, rank: int = 0) -> None:
        loop = asyncio.get_running_loop()
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        # Whole milliseconds: float sums must not make two runs differ.
        wake = round((self.now + seconds) * 1000) / 1000
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (wake, rank, next(self._seq), fut))
        self._notify()
        await fut

    @asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        """Around anything a task waits for on the network: the instant is
        not over until it is done."""
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1
            self._notify()

    def wrap(self, obj: Any, *names: str) -> None:
        """Make `obj`'s coroutine methods `names` count as busy (on this
        instance only)."""
        for name in names:
            fn = getattr(obj, name)

            async def wrapped(*a: Any, _fn: Any = fn, _name: str = name, **kw: Any) -> Any:
                t0 = time.monotonic()
                async with self.busy():
                    try:
                        return await _fn(*a, **kw)
                    finally:
                        n, total = self.waits.get(_name, (0, 0.0))
                        self.waits[_name] = (n + 1, total + time.monotonic() - t0)
            setattr(obj, name, wrapped)

    # -- meters ----------------------------------------------------------------

    async def open_gate(self) -> int:
        """The UDP port the meters ask on (127.0.0.1)."""
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        transport, proto = await loop.create_datagram_endpoint(lambda: _MeterGate(self), local_addr=("127.0.0.1", 0))
        self._gate = proto
        self.port = transport.get_extra_info("sockname")[1]
        return self.port

    def close_gate(self) -> None:
        if self._gate is not None and self._gate.transport is not None:
            self._gate.transport.close()

    def add_meter(self, name: str, alive: Callable[[], bool], boot_at: float | None = None) -> None:
        """A meter process (again, after a reboot) that booted at simulated
        time `boot_at` (default: the start): its virtual ms count from there."""
        offset = 0 if boot_at is None else int(round((boot_at - self.start) * 1000))
        self._meters[name] = _Meter(name, alive, offset_ms=offset)

    def meter_waits(self, name: str, target_ms: int, addr: Any) -> None:
        m = self._meters.get(name)
        if m is None:
            log.warning("conductor: unknown meter %r", name)
            return
        m.addr = addr
        target_ms += m.offset_ms
        if target_ms <= self.granted_ms:
            # Already granted (a resend after a lost answer): answer again.
            m.target_ms = None
            assert self._gate is not None
            self._gate.grant(addr, self.granted_ms - m.offset_ms)
        else:
            m.target_ms = target_ms
            self._notify()

    def _release_meters(self) -> None:
        g = self.granted_ms
        assert self._gate is not None
        for m in self._meters.values():
            if m.target_ms is not None and m.target_ms <= g:
                m.target_ms = None
                self._gate.grant(m.addr, g - m.offset_ms)

    def _meters_idle(self) -> bool:
        return all(m.target_ms is not None or not m.alive() for m in self._meters.values())

    # -- stepping ------------------------------------------------------------------

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def quiet(self) -> None:
        """Until every meter waits for a grant, nothing is on the network
        and no task is ready to run."""
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        waited = time.monotonic()
        while True:
            while self.inflight or not self._meters_idle():
                self._changed.clear()
                if not self.inflight and self._meters_idle():
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), 0.5)  # a meter that exits says nothing
                except asyncio.TimeoutError:
                    pass
                if time.monotonic() - waited > self.stall_s:
                    self.stalls += 1
                    log.error("conductor: no progress in %.0f s at %.0f (%d on the network, meters %s); going on",
                              self.stall_s, self.now, self.inflight,
                              [m.name for m in self._meters.values() if m.target_ms is None and m.alive()])
                    return
            for _ in range(3):
                await asyncio.sleep(0)
            ready = getattr(loop, "_ready", None)
            if not self.inflight and self._meters_idle() and not ready:
                return

    def next_wake(self) -> float | None:
        while self._sleepers and self._sleepers[0][3].done():  # cancelled
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def _pace(self, t: float) -> None:
        if self.ceiling_speed:
            due = self._real_start + (t - self.start) / self.ceiling_speed
            left = due - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)

    async def run(self, end: float, on_step: Callable[[float], Any] | None = None) -> None:
        """Step until simulated time `end` (every task due then has run)."""
        self._real_start = time.monotonic()
        await self.quiet()
        while True:
            horizon = min([self.now + self.lookahead_s, end] + [b for b in self.barriers if b > self.now])
            await self._pace(horizon)
            self.granted_ms = int(round((horizon - self.start) * 1000))
            t0 = time.monotonic()
            self._release_meters()
            await self.quiet()
            t1 = time.monotonic()
            while (wake := self.next_wake()) is not None and wake <= horizon:
                _, _, _, fut = heapq.heappop(self._sleepers)
                self.now = max(self.now, wake)
                fut.set_result(None)
                await self.quiet()
            self.phase_s["meters"] += t1 - t0
            self.phase_s["coordinators"] += time.monotonic() - t1
            self.now = horizon
            self.steps += 1
            if on_step is not None:
                on_step(self.now)
            if self.now >= end:
                return


# The meter's side, written beside main.py in the demo's image folders and
# run instead of it: the scripted HAL on virtual time (hal_script.json),
# the firmware's ticks on the HAL's, and a sleep that asks the conductor
# before passing what it granted. MicroPython; nothing here runs on a board.
METER_SHIM = r'''# Demo only: this meter steps with the demo's conductor (microgrid/conductor.py).
import socket

from edge import hal, ticks
from edge.hal import scripted

NAME = %(name)r
ADDR = socket.getaddrinfo("127.0.0.1", %(port)d)[0][-1]
_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
_sock.settimeout(2)
_granted = [-1]


def _virtual_ms():
    return scripted._elapsed()


def _sleep_ms(ms):
    target = _virtual_ms() + int(ms)
    silent = 0
    while target > _granted[0]:
        _sock.sendto(b"W %%s %%d" %% (NAME, target), ADDR)
        try:
            data = _sock.recv(64)
        except OSError:
            # Lost either way: ask again. Ten minutes without an answer:
            # the demo is gone (killed, crashed); do not outlive it.
            silent += 1
            if silent > 300:
                raise SystemExit(4)
            continue
        if data.startswith(b"G "):
            _granted[0] = int(data[2:])
    hal.advance(int(ms))


def _since(start):
    return hal.ticks_diff(hal.ticks_ms(), start)


ticks.ticks_ms = hal.ticks_ms
ticks.since = _since
ticks.sleep_ms = _sleep_ms
exec(open("main.py").read())
'''
