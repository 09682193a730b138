# Scripted hardware for the unix port: replays recordings, records writes.
#
# A script is a dict (or a JSON file named by load(path)):
#   {"uart": {"2": {"replies": ["01 04 14 ...", null, ...], "repeat": false}},
#    "pin": {"4": {"edges": [[t_ms, level], ...], "level": 1}},
#    "adc": {"34": {"samples": [u16, ...]}},
#    "virtual_time": true}
# A UART answers each write with the next recorded reply (hex, spaces
# allowed; null = the device stays silent) and keeps every write in
# `writes`. A pin fires its IRQ handler for each recorded edge once the
# clock passes the edge's time (ms from load()), with ticks_ms() inside the
# handler returning the edge's time, as a real IRQ would see it. An ADC
# returns its samples in order, cycling. With virtual_time the clock moves
# only by sleep_ms() and advance(), so tests are exact and instant, and
# ticks_ms() wraps with the runtime's period as the board's does (2^30 ms
# in the esp32-like build), so wrap bugs show.

import binascii
import gc
import json
import time

from edge.hal import region

if not hasattr(time, "ticks_ms"):
    # CPython: the flash tool runs the drivers' config checks, which import
    # this module but never drive hardware; MicroPython's tick functions
    # over the host's monotonic clock are enough there.
    import time as _host

    class time:  # noqa: N801 - stands in for MicroPython's time module
        PERIOD = 1 << 30

        @staticmethod
        def ticks_ms():
            return int(_host.monotonic() * 1000) % time.PERIOD

        @staticmethod
        def ticks_us():
            return int(_host.monotonic() * 1000000) % time.PERIOD

        @staticmethod
        def ticks_add(t, delta):
            return (t + delta) % time.PERIOD

        @staticmethod
        def ticks_diff(a, b):
            return (a - b + time.PERIOD // 2) % time.PERIOD - time.PERIOD // 2

        @staticmethod
        def sleep_ms(ms):
            _host.sleep(ms / 1000)

        @staticmethod
        def time_ns():
            return _host.time_ns()

BACKEND = "scripted"
IS_BOARD = False

PIN_IN = 1
PIN_OUT = 3
PULL_UP = 1
IRQ_FALLING = 1
IRQ_RISING = 2
ATTEN_11DB = 3

_script = {}
_uarts = {}
_pins = {}
_adcs = {}
_virtual = None  # ms, when time is virtual
_t0 = time.ticks_ms()
_irq_time = None
_pumping = False
watchdogs = []
reboots = []


def load(script):
    """Install a script (dict or path of a JSON file); resets all devices."""
    global _script, _virtual, _t0, _irq_time
    if isinstance(script, str):
        with open(script) as f:
            script = json.load(f)
    _script = script
    _uarts.clear()
    _pins.clear()
    _adcs.clear()
    _irq_time = None
    _virtual = 0 if script.get("virtual_time") else None
    _t0 = time.ticks_ms() if _virtual is None else 0
    _reset_wall()


def _try_default_script():
    # The firmware under the unix port picks up hal_script.json from the
    # image folder when a test put one there.
    try:
        load("hal_script.json")
    except OSError:
        pass


def _section(kind, key):
    return _script.get(kind, {}).get(str(key), {})


def _now():
    if _virtual is not None:
        return _virtual
    return time.ticks_ms()


# The largest ticks value: the period less one (2^30 - 1 on a 32-bit port).
_TICKS_MAX = time.ticks_add(0, -1)


def _ticks_at(ms):
    # ticks_ms() at `ms` after load(): virtual time wraps as a board's does.
    if _virtual is not None:
        return ms & _TICKS_MAX
    return time.ticks_add(_t0, ms)


def _elapsed():
    # ms since load(), unbounded under virtual time.
    if _virtual is not None:
        return _virtual
    return time.ticks_diff(time.ticks_ms(), _t0)


def ticks_ms():
    if _irq_time is not None:
        return _irq_time
    _pump()
    if _virtual is not None:
        return _virtual & _TICKS_MAX
    return time.ticks_ms()


ticks_diff = time.ticks_diff


def sleep_ms(ms):
    global _virtual
    if _virtual is not None:
        _virtual += int(ms)
        _pump()
    else:
        time.sleep_ms(int(ms))


def advance(ms):
    """Move virtual time on (or, with real time, just deliver due edges)."""
    global _virtual
    if _virtual is not None:
        _virtual += int(ms)
    _pump()


def irq_off():
    return 0


def irq_on(state):
    pass


def _pump():
    # Deliver every recorded edge whose time has come, in time order.
    global _irq_time, _pumping
    if _pumping or not _pins:
        return
    _pumping = True
    try:
        elapsed = _elapsed()
        while True:
            best = None
            for p in _pins.values():
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
                    _irq_time = _ticks_at(t)
                    try:
                        best.handler(best)
                    finally:
                        _irq_time = None
    finally:
        _pumping = False


class UART:
    def __init__(self, key, cfg):
        sec = _section("uart", key)
        self.replies = sec.get("replies", [])
        self.repeat = sec.get("repeat", False)
        self.next = 0
        self.rx = b""
        self.writes = []
        self.cfg = cfg

    def write(self, data):
        self.writes.append(bytes(data))
        if self.next >= len(self.replies):
            if not self.repeat or not self.replies:
                return len(data)
            self.next = 0
        reply = self.replies[self.next]
        self.next += 1
        if reply:
            self.rx += binascii.unhexlify(reply.replace(" ", ""))
        return len(data)

    def any(self):
        return len(self.rx)

    def read(self, n=-1):
        if not self.rx:
            return None
        if n < 0 or n >= len(self.rx):
            out, self.rx = self.rx, b""
        else:
            out, self.rx = self.rx[:n], self.rx[n:]
        return out


def uart(cfg):
    key = cfg.get("id", 2)
    if key not in _uarts:
        _uarts[key] = UART(key, cfg)
    return _uarts[key]


class Pin:
    def __init__(self, key, mode):
        sec = _section("pin", key)
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
            _pump()
            return self.level
        self.level = 1 if v else 0
        self.history.append((ticks_ms(), self.level))

    def irq(self, handler=None, trigger=IRQ_FALLING, hard=False):
        self.handler = _irq_entry(handler, hard)
        self.trigger = trigger


def pin(pin_id, mode, pull=None):
    if pin_id not in _pins:
        _pins[pin_id] = Pin(pin_id, mode)
    return _pins[pin_id]


class ADC:
    def __init__(self, key):
        self.samples = _section("adc", key).get("samples", [32768])
        self.next = 0
        # Under virtual time a conversion takes time (default: two reads
        # per 250 us pair, the recorded waveforms' 4 kHz pair rate).
        self.read_us = _section("adc", key).get("read_us", 125)

    def read_u16(self):
        if _script.get("virtual_time"):
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


def adc(pin_id, atten=None):
    if pin_id not in _adcs:
        _adcs[pin_id] = _make_adc(pin_id)
    return _adcs[pin_id]


class Watchdog:
    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.feeds = 0

    def feed(self):
        self.feeds += 1


def watchdog(timeout_ms):
    w = Watchdog(timeout_ms)
    watchdogs.append(w)
    return w


keepalives = []


def keep_fed(wdt, period_ms, for_ms):
    """Recorded only: the unix port has no timer interrupts and no REPL to
    keep alive after the firmware ends."""
    keepalives.append((wdt, period_ms, for_ms))
    return None


class Reboot(Exception):
    """Raised by reboot() under the unix port; main.py exits with status 3
    so a supervisor (or a test) can start the image again."""


def reboot():
    reboots.append(ticks_ms())
    raise Reboot("reboot requested")


def free_memory():
    gc.collect()
    return gc.mem_free()


def wait_tx_done(u, nbytes, baud):
    pass


def tear_next_write(nbytes, garbage=None):
    """Tear the next region write after `nbytes` bytes; `garbage`, if given,
    is one more byte written half-programmed at the cut."""

    def cut(reg, offset, data):
        region.fault = None
        n = min(nbytes, len(data))
        out = bytes(data[:n])
        if garbage is not None and n < len(data):
            out += bytes([garbage])
        return out

    region.fault = cut



class Network:
    """The unix port is online through the host."""

    def __init__(self, wifi_cfg):
        self.cfg = wifi_cfg

    def up(self):
        return True

    def ensure(self, retry_ms=30000):
        return True


def network(wifi_cfg):
    return Network(wifi_cfg)


# Wall time. Under real time the host's clock is both the RTC and what SNTP
# answers. Under virtual time both follow virtual ms from what a test set:
# the RTC starts as a fresh board's (2000-01-01 at load(), so never set)
# and SNTP has no answer until set_true_time().
_EPOCH_2000_MS = 946684800000
_rtc_at0 = None  # Unix ms the RTC read at virtual 0
_true_at0 = None  # Unix ms SNTP answers at virtual 0
_sntp_ok = True
counts = {"rtc_set": 0, "sntp": 0}  # RTC writes, SNTP answers given


def _reset_wall():
    global _rtc_at0, _true_at0, _sntp_ok
    _rtc_at0 = _EPOCH_2000_MS
    _true_at0 = None
    _sntp_ok = True
    counts["rtc_set"] = 0
    counts["sntp"] = 0


def _host_ms():
    return time.time_ns() // 1000000


def rtc_ms():
    """The RTC as Unix ms (an int)."""
    if _virtual is None:
        return _host_ms()
    return _rtc_at0 + _virtual


def set_rtc_ms(ms):
    global _rtc_at0
    counts["rtc_set"] += 1
    if _virtual is not None:
        _rtc_at0 = ms - _virtual


def set_true_time(ms):
    """Virtual time: SNTP answers `ms` now, and on from there. Setting it
    again moves the world's time against the board's ticks (a step)."""
    global _true_at0
    if _virtual is None:
        raise ValueError("set_true_time needs virtual_time in the script")
    _true_at0 = None if ms is None else ms - _virtual


def set_sntp(ok):
    """False: SNTP gets no answer (no network time server reachable)."""
    global _sntp_ok
    _sntp_ok = bool(ok)


def sntp():
    """Unix ms from one SNTP exchange, the RTC set to it; None if none."""
    if not _sntp_ok:
        return None
    if _virtual is None:
        ms = _host_ms()
    elif _true_at0 is None:
        return None
    else:
        ms = _true_at0 + _virtual
        set_rtc_ms(ms)
    counts["sntp"] += 1
    return ms


# --- Meters: sub-millisecond time, pulse counters, busy Python, signals ---
#
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

import math

FULL_SCALE_UV = 3300000  # stand-in ADC: read_u16() 65535 is 3.3 V
SCHED_DEPTH = 4  # MICROPY_SCHEDULER_DEPTH, MicroPython's default
_stalled = None  # soft callbacks waiting while Python is busy (a list)
_uc = None


class _MicroClock:
    """Microseconds on top of the millisecond clock: each ADC conversion
    spends virtual time (below a millisecond, kept in `frac`), and
    ticks_us() wraps as the runtime's ticks do."""

    def __init__(self):
        self.script = _script
        self.virtual = bool(_script.get("virtual_time"))
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
    if _uc is None or _uc.script is not _script:
        _uc = _MicroClock()
    return _uc


def ticks_us():
    if not _script.get("virtual_time"):
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
    if not _script.get("virtual_time"):
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
    if hard and _script.get("hard_irq", True):
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
    hard = _script.get("hard_irq", True)
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
    if not _script.get("pcnt", True):
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


def _make_adc(key):
    sec = _section("adc", key)
    if "signal" in sec:
        return SignalADC(sec)
    return ADC(key)


_try_default_script()
