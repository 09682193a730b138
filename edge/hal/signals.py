# Scripted hardware for the unix port, the signal half: pins and their
# recorded edges, ADCs (recorded samples or synthesised signals),
# microsecond time, pulse counters and pin IRQs (hard and soft).
# edge/hal/scripted.py loads this on first use (pin(), adc(), pcnt(),
# pin_irq(), ticks_us() or now_us() under virtual time, stall()): the
# firmware with a PZEM meter never needs it, and its heap benchmark should not charge a test stand-in's code to the firmware (a
# board runs edge/hal/board.py instead).

import math

from edge.hal import scripted as _s
from edge.hal.scripted import IRQ_FALLING, IRQ_RISING, PIN_IN, advance, pin, ticks_ms

time = _s.time  # MicroPython's, or the CPython stand-in there

# Script keys read here:
#   "adc": {"36": {"samples": [...], "read_us": 125}}: read_uv() is
#       u16 * 3.3 V / 65535; under virtual time each read takes read_us
#   "pcnt": false       the board has no esp32.PCNT (pcnt() returns None)
#   "hard_irq": false   the port has no hard IRQs (pin_irq() falls back to soft)
#   "adc": {"36": {"signal": {...}, "read_us": 40}}   a synthesised signal
#
# Hardware runs while Python is busy; Python's own work does not. stall(ms)
# moves virtual time on with Python busy: a pulse counter counts every edge
# (it is hardware), a hard IRQ handler runs at its edge (it preempts Python),
# and a soft IRQ's callback waits in MicroPython's scheduler queue (at most
# SCHED_DEPTH of them; mp_sched_schedule drops the rest) and runs when
# Python resumes, seeing the time and pin level of then. Outside a stall
# Python is idle (sleeping), so soft callbacks run at their edges.

FULL_SCALE_UV = 3300000  # stand-in ADC: read_u16() 65535 is 3.3 V
SCHED_DEPTH = 4  # MICROPY_SCHEDULER_DEPTH, MicroPython's default
_pumping = False
_stalled = None  # soft callbacks waiting while Python is busy (a list)
_uc = None


def pump():
    # Deliver every recorded edge whose time has come, in time order.
    global _pumping
    if _pumping or not _s._pins:
        return
    _pumping = True
    try:
        elapsed = _s._elapsed()
        while True:
            best = None
            for p in _s._pins.values():
                if p.next < len(p.edges) and p.edges[p.next][0] <= elapsed:
                    if best is None or p.edges[p.next][0] < best.edges[best.next][0]:
                        best = p
            if best is None:
                break
            t, level = best.edges[best.next]
            best.next += 1
            prev = best.level
            best.level = level
            if best.handler is not None and level != prev:
                falling = prev == 1 and level == 0
                if (falling and best.trigger & IRQ_FALLING) or (not falling and best.trigger & IRQ_RISING):
                    _s._irq_time = _s._ticks_at(t)
                    try:
                        best.handler(best)
                    finally:
                        _s._irq_time = None
    finally:
        _pumping = False


class Pin:
    def __init__(self, key, mode):
        sec = _s._section("pin", key)
        self.key = key
        self.mode = mode
        self.edges = sec.get("edges", [])
        self.level = sec.get("level", 1)
        self.next = 0
        self.handler = None
        self.trigger = 0
        self.history = []

    def value(self, v=None):
        if v is None:
            pump()
            return self.level
        self.level = 1 if v else 0
        h = self.history
        h.append((ticks_ms(), self.level))
        if len(h) > _s.KEPT:
            h.pop(0)

    def irq(self, handler=None, trigger=IRQ_FALLING, hard=False):
        self.handler = _irq_entry(handler, hard) if handler is not None else None
        self.trigger = trigger


class ADC:
    def __init__(self, key):
        self.samples = _s._section("adc", key).get("samples", [32768])
        self.next = 0
        # Under virtual time a conversion takes time (default: two reads
        # per 250 us pair, the recorded waveforms' 4 kHz pair rate).
        self.read_us = _s._section("adc", key).get("read_us", 125)

    def read_u16(self):
        if _s._script.get("virtual_time"):
            _clock().spend(self.read_us)
        v = self.samples[self.next]
        self.next += 1
        if self.next >= len(self.samples):
            self.next = 0
        return v

    def read_uv(self):
        # u16 * 3300000 // 65535 exactly, without a long int on 32 bits
        # (3300000 / 65535 = 50 + 1550 / 4369).
        v = self.read_u16()
        return v * 50 + v * 1550 // 4369


class _MicroClock:
    """Microseconds on top of the millisecond clock: each ADC conversion
    spends virtual time (below a millisecond, kept in `frac`), and
    ticks_us() wraps as the runtime's ticks do."""

    def __init__(self):
        self.script = _s._script
        self.virtual = bool(_s._script.get("virtual_time"))
        self.last_ms = ticks_ms()
        self.last_us = time.ticks_us()
        self.ticks = 0
        self.abs_us = 0
        self.frac = 0

    def sync(self):
        if not self.virtual:
            now = time.ticks_us()
            self.abs_us += time.ticks_diff(now, self.last_us)
            self.last_us = now
            return
        ms = ticks_ms()
        d = time.ticks_diff(ms, self.last_ms)
        self.last_ms = ms
        if d > 0:
            self.abs_us += d * 1000
            while d > 0:
                step = d if d < 100000 else 100000
                self.ticks = time.ticks_add(self.ticks, step * 1000)
                d -= step

    def spend(self, us):
        if not self.virtual:
            return  # real time passes by itself
        self.frac += us
        if self.frac >= 1000:
            whole = self.frac // 1000
            self.frac -= whole * 1000
            advance(whole)


def _clock():
    global _uc
    if _uc is None or _uc.script is not _s._script:
        _uc = _MicroClock()
    return _uc


def ticks_us():
    if not _s._script.get("virtual_time"):
        return time.ticks_us()
    c = _clock()
    c.sync()
    return time.ticks_add(c.ticks, c.frac)


def now_us():
    """Virtual microseconds since load() (an ever-growing int): the time
    base of synthesised signals."""
    c = _clock()
    c.sync()
    return c.abs_us + c.frac


def stall(ms):
    """Python busy for `ms` of virtual time (a flash erase, a signature,
    a garbage collection): see the section comment."""
    global _stalled
    if not _s._script.get("virtual_time"):
        raise ValueError("stall() needs a script with virtual_time")
    _stalled = []
    try:
        advance(ms)
    finally:
        queue, _stalled = _stalled, None
    for p, handler in queue:
        handler(p)
    return len(queue)


def _irq_entry(handler, hard):
    # What a pin's IRQ runs: hard handlers at the edge with the heap locked
    # (a hard IRQ handler that allocates fails on a board, so it fails
    # here); soft ones at the edge while Python idles, queued while busy.
    if handler is None:
        return None
    if hard and _s._script.get("hard_irq", True):
        import micropython

        def run_hard(p):
            micropython.heap_lock()
            try:
                handler(p)
            finally:
                micropython.heap_unlock()

        return run_hard

    def run_soft(p):
        if _stalled is None:
            handler(p)
        elif len(_stalled) < SCHED_DEPTH:
            _stalled.append((p, handler))

    return run_soft


def pin_irq(p, handler, trigger):
    """Attach `handler` as a hard IRQ where the port has them (True), else
    as a soft one (False)."""
    hard = _s._script.get("hard_irq", True)
    p.irq(handler, trigger, hard=hard)
    return bool(hard)


class PCNT:
    """esp32.PCNT stand-in: counts the pin's scripted edges as hardware
    would, whether or not Python ran at the time, and returns to 0 at
    `limit` as the ESP32's counter does at its max."""

    INCREMENT = 1
    IGNORE = 0

    def __init__(self, pin_id, rising, falling, limit):
        self.pin = pin(pin_id, PIN_IN)
        self.pos = self.pin.next
        self.level = self.pin.level
        self.rising = rising
        self.falling = falling
        self.limit = limit
        self.count = 0

    def _scan(self):
        ticks_ms()  # deliver the edges whose time has come
        p = self.pin
        while self.pos < p.next:
            lvl = p.edges[self.pos][1]
            self.pos += 1
            if lvl == self.level:
                continue
            self.level = lvl
            self.count += self.rising if lvl else self.falling
            if self.limit and self.count >= self.limit:
                self.count = 0

    def value(self, v=None):
        self._scan()
        c = self.count
        if v is not None:
            if v != 0:
                raise ValueError("PCNT value can only be reset to 0")
            self.count = 0
        return c


def pcnt(pin_id, unit=0, rising=True, glitch_ns=12700, limit=32767):
    """A pulse counter on `pin_id` counting rising (or falling) edges, or
    None where the board has none (script "pcnt": false)."""
    if not _s._script.get("pcnt", True):
        return None
    return PCNT(pin_id, 1 if rising else 0, 0 if rising else 1, limit)


class SignalADC:
    """An ADC reading a synthesised mains-like signal in microvolts:
      offset_uv + peak_uv * sin(2 pi hz t + phase_deg) + noise,
    t being virtual time, `steps` [[from_ms, peak_uv, phase_deg], ...]
    changing the amplitude and phase over time (a load switching), and
    each conversion spending `read_us` of virtual time as a real one does.
    The phase is computed from integers (t in us times the frequency in
    mHz), so it stays exact in float32 over any run."""

    def __init__(self, sec):
        sig = sec["signal"]
        self.offset = sig.get("offset_uv", FULL_SCALE_UV // 2)
        self.mhz = int(sig.get("hz", 50) * 1000 + 0.5)
        self.steps = sig.get("steps") or [[0, sig.get("peak_uv", 0), sig.get("phase_deg", 0)]]
        self.step = 0
        self.noise = sig.get("noise_uv", 0)
        self.rand = sig.get("seed", 1) & 0x7FFFFFFF
        self.read_us = sec.get("read_us", 40)
        self.reads = 0

    def read_uv(self):
        c = _clock()
        t = now_us()
        c.spend(self.read_us)
        self.reads += 1
        steps = self.steps
        while self.step + 1 < len(steps) and steps[self.step + 1][0] * 1000 <= t:
            self.step += 1
        _, peak, phase = steps[self.step]
        frac = (t * self.mhz % 1000000000) / 1000000000
        x = self.offset + peak * math.sin(2 * math.pi * frac + phase * math.pi / 180)
        if self.noise:
            self.rand = (self.rand * 1103515245 + 12345) & 0x7FFFFFFF
            x += self.noise * 1.7320508 * (self.rand / 1073741824.0 - 1.0)
        if x < 0:
            return 0
        if x > FULL_SCALE_UV:
            return FULL_SCALE_UV
        return int(x)

    def read_u16(self):
        return self.read_uv() * 65535 // FULL_SCALE_UV


def make_adc(key):
    sec = _s._section("adc", key)
    if "signal" in sec:
        return SignalADC(sec)
    return ADC(key)
