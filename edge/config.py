# The meter's configuration: one JSON file with validated defaults.
#
# Every key has a default here and a check (the meter's own keys through
# edge.meters.validate); a bad value is refused by `config set` before it
# is saved, and a bad file at boot puts the board in safe mode (see
# edge/safemode.py) with a message naming the key, the value and what is
# allowed, because a meter that runs on a wrong config produces wrong
# evidence for years.

import json

try:
    from micropython import const
except ImportError:  # CPython: the flash tool validates configs with this module
    def const(x):
        return x

CONFIG_FILE = "config.json"

DEFAULTS = {
    "device_name": "meter",
    "coordinator_host": "127.0.0.1",
    "coordinator_port": 5683,
    "interval_s": 10.0,
    "persist_every": 10,
    "key_file": "device.key",
    # OSCORE security context written by `microgrid flash` (edge/oscore.py);
    # without the file the link is unprotected.
    "oscore_file": "oscore.json",
    "state_file": "state",
    "outbox_file": "outbox",
    "outbox_size": 1536,
    "batch_size": 1,
    "ack_timeout_s": 2.0,
    "max_retransmit": 4,
    "retry_after_s": 5.0,
    "clock_start": 0,
    "clock_speed": 1.0,
    "clock_origin": 0,
    "time_resync_s": 21600,
    "max_readings": 0,
    "drain_timeout_s": 30.0,
    "local_port": 0,
    "meter": {"type": "simulated", "profile": "household", "seed": 1},
    "wifi": None,
    "log_level": "info",
    "console": False,
    "watchdog_s": 300.0,
    # Over-the-air updates (docs/UPDATES.md): null (off) or {"board": NAME,
    # "keys": [release public keys, hex]}, set at flashing.
    "updates": None,
}

# Keys the running firmware picks up at once when set from the console;
# the others take effect after a reboot.
LIVE_KEYS = ("interval_s", "persist_every", "retry_after_s", "log_level", "max_readings", "drain_timeout_s",
             "coordinator_host", "coordinator_port")


class ConfigError(ValueError):
    pass


def _num(cfg, key, lo, hi):
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError("config %s=%r: expected a number in %s..%s" % (key, v, lo, hi))


def _int(cfg, key, lo, hi):
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError("config %s=%r: expected an integer in %d..%d" % (key, v, lo, hi))


def _str(cfg, key):
    v = cfg[key]
    if not isinstance(v, str) or not v:
        raise ConfigError("config %s=%r: expected a non-empty string" % (key, v))


def _meter(cfg):
    meter = cfg["meter"]
    if not isinstance(meter, dict) or not isinstance(meter.get("type"), str):
        raise ConfigError("config meter=%r: expected an object with a \"type\"" % (meter,))
    from edge import meters

    if meter["type"] not in meters.TYPES:
        raise ConfigError("config meter.type=%r: expected one of %s" % (meter["type"], ", ".join(meters.TYPES)))
    try:
        meters.validate(meter)
    except ConfigError:
        raise
    except ValueError as e:
        # The driver's own keys: a value the driver would refuse at boot
        # (an address no Modbus device can have, a pin that is no number)
        # is refused here, before it is saved.
        msg = str(e)
        raise ConfigError(msg if msg.startswith("config ") else "config " + msg)


def check_watchdog(cfg):
    # Shorter than the longest step that cannot feed it (a DNS lookup, an
    # SNTP exchange, a signature on a slow board) would reset the board in
    # a loop.
    v = cfg["watchdog_s"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v == 0 or 30 <= v <= 3600):
        raise ConfigError("config watchdog_s=%r: expected 0 (off) or a number of seconds in 30..3600" % (v,))


def _console(cfg):
    if not isinstance(cfg["console"], bool):
        raise ConfigError("config console=%r: expected true or false" % (cfg["console"],))


def _log_level(cfg):
    if cfg["log_level"] not in ("debug", "info", "warning", "error"):
        raise ConfigError("config log_level=%r: expected debug, info, warning or error" % (cfg["log_level"],))


def _wifi(cfg):
    wifi = cfg["wifi"]
    if wifi is None:
        return
    if (not isinstance(wifi, dict) or not isinstance(wifi.get("ssid"), str) or not wifi["ssid"]
            or not isinstance(wifi.get("password", ""), str)):
        # Never echo the object: it holds the password.
        raise ConfigError("config wifi: expected null or an object with a non-empty \"ssid\" and a \"password\" string")


def _updates(cfg):
    u = cfg["updates"]
    if u is None:
        return
    ok = isinstance(u, dict) and isinstance(u.get("board"), str) and u["board"] and isinstance(u.get("keys"), list)
    ok = ok and 1 <= len(u["keys"]) <= 4 and not [k for k in u if k not in ("board", "keys")]
    for k in (u["keys"] if ok else ()):
        # A compressed secp256k1 public key: 33 bytes in hex.
        ok = ok and isinstance(k, str) and len(k) == 66 and k[:2] in ("02", "03")
        try:
            int(k, 16)
        except (TypeError, ValueError):
            ok = False
    if not ok:
        raise ConfigError("config updates=%r: expected null or {\"board\": NAME, \"keys\": [1..4 compressed "
                          "public keys in hex (66 characters, 02.. or 03..)]}" % (u,))


# One check per key, in the order errors are reported: (key, kind, lo,
# hi). Constant tuples, frozen into the firmware image with the bytecode,
# so they take no heap on a board (a lambda per key took ~2 KB).
_NUM = const(0)  # a number in lo..hi
_INT = const(1)  # an integer in lo..hi
_STR = const(2)  # a non-empty string
_OTHER = const(3)  # the key's own check, in _check()
CHECKS = (
    ("device_name", _STR, 0, 0),
    ("coordinator_host", _STR, 0, 0),
    ("coordinator_port", _INT, 1, 65535),
    ("local_port", _INT, 0, 65535),
    ("interval_s", _NUM, 0.001, 86400),
    ("persist_every", _INT, 1, 100000),
    ("key_file", _STR, 0, 0),
    ("oscore_file", _STR, 0, 0),
    ("state_file", _STR, 0, 0),
    ("outbox_file", _STR, 0, 0),
    ("outbox_size", _INT, 2, 100000),
    ("batch_size", _INT, 1, 8),
    ("ack_timeout_s", _NUM, 0.01, 60),
    ("max_retransmit", _INT, 0, 20),
    ("retry_after_s", _NUM, 0, 3600),
    ("clock_start", _NUM, 0, 1 << 40),
    ("clock_speed", _NUM, 0.001, 1000000),
    ("clock_origin", _NUM, 0, 1 << 40),
    ("time_resync_s", _NUM, 60, 7 * 86400),
    ("max_readings", _INT, 0, 1 << 40),
    ("drain_timeout_s", _NUM, 0, 1 << 30),
    ("meter", _OTHER, 0, 0),
    ("console", _OTHER, 0, 0),
    ("watchdog_s", _OTHER, 0, 0),
    ("log_level", _OTHER, 0, 0),
    ("wifi", _OTHER, 0, 0),
    ("updates", _OTHER, 0, 0),
)


def _check(cfg, key, kind, lo, hi):
    if kind == _NUM:
        _num(cfg, key, lo, hi)
    elif kind == _INT:
        _int(cfg, key, lo, hi)
    elif kind == _STR:
        _str(cfg, key)
    elif key == "meter":
        _meter(cfg)
    elif key == "console":
        _console(cfg)
    elif key == "watchdog_s":
        check_watchdog(cfg)
    elif key == "log_level":
        _log_level(cfg)
    elif key == "updates":
        _updates(cfg)
    else:
        _wifi(cfg)


def problems(cfg):
    """{key: ConfigError} for every key whose value is wrong (unknown keys
    under their own name). Empty when the config is valid."""
    out = {}
    for key in cfg:
        if key not in DEFAULTS:
            out[key] = ConfigError("config key %r is unknown; allowed: %s" % (key, ", ".join(sorted(DEFAULTS))))
    for key, kind, lo, hi in CHECKS:
        if key in out:
            continue
        try:
            _check(cfg, key, kind, lo, hi)
        except ConfigError as e:
            out[key] = e
    return out


def validate(cfg):
    """The config, or ConfigError naming the first wrong key, its value and
    what is allowed."""
    found = problems(cfg)
    if found:
        for key in cfg:
            if key in found and key not in DEFAULTS:
                raise found[key]
        for spec in CHECKS:
            key = spec[0]
            if key in found:
                raise found[key]
    return cfg


def merged(raw):
    """The defaults overlaid with the file's own keys, not validated."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    cfg = {}
    for key in DEFAULTS:
        cfg[key] = DEFAULTS[key]
    for key in raw:
        cfg[key] = raw[key]
    return cfg


def with_defaults(raw):
    return validate(merged(raw))


def load_raw(path=CONFIG_FILE):
    """The config file's own keys (no defaults filled in)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError("config file %s not found: flash the board with `microgrid flash`" % path)
    try:
        raw = json.loads(text)
    except ValueError:
        raise ConfigError("config file %s is not valid JSON" % path)
    if not isinstance(raw, dict):
        raise ConfigError("config file %s must hold a JSON object" % path)
    return raw


def load(path=CONFIG_FILE):
    return with_defaults(load_raw(path))


def save_raw(path, raw, checked=False):
    """Validate, then replace the config file (write a copy, rename it
    over: a power cut leaves the old or the new file, never half of one).
    checked=True: the caller validated the change with set_key, which lets
    a config that was already wrong be repaired one key at a time; the
    merged config is returned unvalidated."""
    cfg = merged(raw) if checked else with_defaults(raw)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(raw))
    import os

    os.rename(tmp, path)
    return cfg


def parse_value(text):
    """A console value: JSON if it parses (numbers, true/false/null,
    objects), else the text itself as a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def set_key(raw, key, value):
    """A copy of `raw` with KEY (or meter.KEY, one level deep) set. Raises
    ConfigError naming the key, value and what is allowed when the new
    value is wrong or makes another key wrong. Keys that were wrong before
    do not block the change: a technician in safe mode repairs a broken
    config one key at a time (problems(merged(...)) lists what is left)."""
    out = {}
    for k in raw:
        out[k] = raw[k]
    if "." in key:
        top, sub = key.split(".", 1)
        if top != "meter" or not sub or "." in sub:
            raise ConfigError("config key %r: only meter.KEY is nested" % key)
        meter = {}
        old = raw.get("meter")
        old = old if isinstance(old, dict) else DEFAULTS["meter"]
        keep = None
        if sub == "type" and old.get("type") != value:
            # A new driver keeps the settings it also takes (the UART, the
            # address) and drops the others, which it would refuse.
            from edge import meters

            keep = meters.keys(value)
        for k, v in old.items():
            if keep is None or k in keep:
                meter[k] = v
        meter[sub] = value
        out["meter"] = meter
    else:
        if key not in DEFAULTS:
            raise ConfigError("config key %r is unknown; allowed: %s" % (key, ", ".join(sorted(DEFAULTS))))
        top = key
        out[key] = value
    after = problems(merged(out))
    if top in after:
        raise after[top]
    if after:
        before = problems(merged(raw))
        for spec in CHECKS:
            k = spec[0]
            if k in after and k not in before:
                raise after[k]
    return out
