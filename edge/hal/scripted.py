# Scripted hardware for the unix port: replays recordings, records writes.
#
# A script is a dict (or a JSON file named by load(path)):
#   {"uart": {"2": {"replies": ["01 04 14 ...", null, ...], "repeat": false}},
#    "pin": {"4": {"edges": [[t_ms, level], ...], "level": 1}},
#    "adc": {"34": {"samples": [u16, ...]}},
#    "virtual_time": true, "ctrl_c_at_feed": 40}
# A UART answers each write with the next recorded reply (hex, spaces
# allowed; null = the device stays silent) and keeps its last KEPT writes
# in `writes`. A pin fires its IRQ handler for each recorded edge once the
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

# What a UART or an output pin keeps of what the firmware wrote: the
# last few, for tests to look at. Unbounded, the record would grow by a
# request per reading and be charged to the firmware's heap (a board keeps
# none of it).
KEPT = 8

_script = {}
_uarts = {}
_pins = {}
_adcs = {}
_virtual = None  # ms, when time is virtual
_t0 = time.ticks_ms()
_irq_time = None  # ticks_ms() inside a pin's IRQ handler (edge/hal/signals.py)
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
    # Deliver every recorded edge whose time has come (edge/hal/signals.py).
    if _pins:
        _signals().pump()


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
        w = self.writes
        w.append(bytes(data))
        if len(w) > KEPT:
            w.pop(0)
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


def pin(pin_id, mode, pull=None):
    if pin_id not in _pins:
        _pins[pin_id] = _signals().Pin(pin_id, mode)
    return _pins[pin_id]


def adc(pin_id, atten=None):
    if pin_id not in _adcs:
        _adcs[pin_id] = _signals().make_adc(pin_id)
    return _adcs[pin_id]


class Watchdog:
    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.feeds = 0

    def feed(self):
        self.feeds += 1
        if self.feeds == _script.get("ctrl_c_at_feed"):
            # Ctrl-C typed on the REPL UART. A board raises KeyboardInterrupt
            # between two bytecodes; the unix port's SIGINT instead jumps out
            # of whatever C code runs (a garbage collection, say) and can
            # crash the interpreter, so a test that must not flake types it
            # here: at the Nth feed, at the top of the firmware's loop or in
            # an idle slice (between readings, or while an exchange waits).
            raise KeyboardInterrupt


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
# In edge/hal/signals.py, loaded on first use (see there).


_sig = None


def _signals():
    # Kept once loaded: an import statement allocates, and the CT driver's
    # sampling loop reads the stand-in ADC without allocating.
    # (`from edge.hal import signals` would ask the package's __getattr__.)
    global _sig
    if _sig is None:
        import sys

        import edge.hal.signals  # noqa: F401

        _sig = sys.modules["edge.hal.signals"]
    return _sig


def ticks_us():
    if not _script.get("virtual_time"):
        return time.ticks_us()
    return _signals().ticks_us()


def now_us():
    """Virtual microseconds since load() (an ever-growing int): the time
    base of synthesised signals."""
    return _signals().now_us()


def stall(ms):
    """Python busy for `ms` of virtual time: see edge/hal/signals.py."""
    return _signals().stall(ms)


def pin_irq(p, handler, trigger):
    """Attach `handler` as a hard IRQ where the port has them (True), else
    as a soft one (False)."""
    return _signals().pin_irq(p, handler, trigger)


def pcnt(pin_id, unit=0, rising=True, glitch_ns=12700, limit=32767):
    """A pulse counter on `pin_id`, or None where the board has none
    (script "pcnt": false)."""
    return _signals().pcnt(pin_id, unit, rising, glitch_ns, limit)



_try_default_script()
