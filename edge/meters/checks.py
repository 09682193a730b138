# Checks for a meter config's keys, shared by the drivers' validate().
#
# A bad value raises ValueError naming the key as the config names it
# (meter.address, meter.uart.baud), the value and what is allowed, so the
# console's `config set` and the boot refuse it before the board runs on it.

PIN_MAX = 48  # highest GPIO number on any supported chip (ESP32-S3)


def fail(key, value, expected):
    raise ValueError("config meter.%s=%r: expected %s" % (key, value, expected))


def known_keys(cfg, allowed, kind):
    for key in cfg:
        if key != "type" and key not in allowed:
            raise ValueError("config meter.%s: not a %s setting; allowed: %s" % (key, kind, ", ".join(sorted(allowed))))


def integer(cfg, key, lo, hi, default=None, prefix=""):
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        fail(prefix + key, v, "an integer in %d..%d" % (lo, hi))
    return v


def number(cfg, key, lo, hi, default=None, prefix=""):
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        fail(prefix + key, v, "a number in %s..%s" % (lo, hi))
    return v


def flag(cfg, key, default, prefix=""):
    v = cfg.get(key, default)
    if not isinstance(v, bool):
        fail(prefix + key, v, "true or false")
    return v


def one_of(cfg, key, choices, default, prefix=""):
    v = cfg.get(key, default)
    if isinstance(v, bool) or v not in choices:
        fail(prefix + key, v, "one of %s" % ", ".join(repr(c) for c in choices))
    return v


def pin(cfg, key, default, optional=False, prefix=""):
    v = cfg.get(key, default)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= PIN_MAX:
        fail(prefix + key, v, "a GPIO number in 0..%d" % PIN_MAX + (" or null" if optional else ""))
    return v


BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def uart(cfg, default_baud, bauds=BAUDS):
    """The `uart` object of a Modbus meter: id, baud, tx, rx, bits, parity
    (null, 0 even, 1 odd: MicroPython's), stop."""
    u = cfg.get("uart", {})
    if not isinstance(u, dict):
        fail("uart", u, "an object such as {\"id\": 2, \"tx\": 17, \"rx\": 16}")
    known = ("id", "baud", "tx", "rx", "bits", "parity", "stop", "timeout_ms")
    for key in u:
        if key not in known:
            raise ValueError("config meter.uart.%s: not a UART setting; allowed: %s" % (key, ", ".join(known)))
    integer(u, "id", 0, 9, 2, "uart.")
    one_of(u, "baud", bauds, default_baud, "uart.")
    pin(u, "tx", None, True, "uart.")
    pin(u, "rx", None, True, "uart.")
    one_of(u, "bits", (7, 8), 8, "uart.")
    one_of(u, "parity", (None, 0, 1), None, "uart.")
    one_of(u, "stop", (1, 2), 1, "uart.")
    integer(u, "timeout_ms", 0, 10000, 0, "uart.")
