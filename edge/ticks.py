# Millisecond ticks that wrap safely on a board (time.ticks_*) and fall
# back to wall time where those do not exist (the firmware's CoAP codec is
# also used from CPython, by the coordinator's load generator).

import time

_HAS_TICKS = hasattr(time, "ticks_ms")


def ticks_ms():
    return time.ticks_ms() if _HAS_TICKS else int(time.time() * 1000)


def add(ticks, ms):
    return time.ticks_add(ticks, ms) if _HAS_TICKS else ticks + ms


def since(start):
    """Milliseconds from `start` (a ticks_ms value) to now."""
    return time.ticks_diff(time.ticks_ms(), start) if _HAS_TICKS else ticks_ms() - start


def sleep_ms(ms):
    if hasattr(time, "sleep_ms"):
        time.sleep_ms(ms)
    else:
        time.sleep(ms / 1000)
