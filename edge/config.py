# The meter's configuration: one JSON file with validated defaults.
#
# Every key has a default here and a check; a bad value stops the boot with
# a message naming the key, the value and what is allowed, because a meter
# that runs on a wrong config produces wrong evidence for years.

import json

CONFIG_FILE = "config.json"

DEFAULTS = {
    "device_name": "meter",
    "coordinator_host": "127.0.0.1",
    "coordinator_port": 5683,
    "interval_s": 10.0,
    "persist_every": 10,
    "key_file": "device.key",
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
}

# Keys the running firmware picks up at once when set from the console;
# the others take effect after a reboot.
LIVE_KEYS = ("interval_s", "persist_every", "retry_after_s", "log_level", "max_readings", "drain_timeout_s")


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


def validate(cfg):
    for key in cfg:
        if key not in DEFAULTS:
            raise ConfigError("config key %r is unknown; allowed: %s" % (key, ", ".join(sorted(DEFAULTS))))
    _str(cfg, "device_name")
    _str(cfg, "coordinator_host")
    _int(cfg, "coordinator_port", 1, 65535)
    _int(cfg, "local_port", 0, 65535)
    _num(cfg, "interval_s", 0.001, 86400)
    _int(cfg, "persist_every", 1, 100000)
    _str(cfg, "key_file")
    _str(cfg, "state_file")
    _str(cfg, "outbox_file")
    _int(cfg, "outbox_size", 2, 100000)
    _int(cfg, "batch_size", 1, 8)
    _num(cfg, "ack_timeout_s", 0.01, 60)
    _int(cfg, "max_retransmit", 0, 20)
    _num(cfg, "retry_after_s", 0, 3600)
    _num(cfg, "clock_start", 0, 1 << 40)
    _num(cfg, "clock_speed", 0.001, 1000000)
    _num(cfg, "clock_origin", 0, 1 << 40)
    _num(cfg, "time_resync_s", 60, 7 * 86400)
    _int(cfg, "max_readings", 0, 1 << 40)
    _num(cfg, "drain_timeout_s", 0, 1 << 30)
    meter = cfg["meter"]
    if not isinstance(meter, dict) or not isinstance(meter.get("type"), str):
        raise ConfigError("config meter=%r: expected an object with a \"type\"" % (meter,))
    from edge.meters import TYPES

    if meter["type"] not in TYPES:
        raise ConfigError("config meter.type=%r: expected one of %s" % (meter["type"], ", ".join(TYPES)))
    if not isinstance(cfg["console"], bool):
        raise ConfigError("config console=%r: expected true or false" % (cfg["console"],))
    _num(cfg, "watchdog_s", 0, 3600)
    if cfg["log_level"] not in ("debug", "info", "warning", "error"):
        raise ConfigError("config log_level=%r: expected debug, info, warning or error" % (cfg["log_level"],))
    wifi = cfg["wifi"]
    if wifi is not None and (not isinstance(wifi, dict) or not isinstance(wifi.get("ssid"), str)):
        raise ConfigError("config wifi=%r: expected null or an object with \"ssid\" and \"password\"" % (wifi,))
    return cfg


def with_defaults(raw):
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    cfg = {}
    for key in DEFAULTS:
        cfg[key] = DEFAULTS[key]
    for key in raw:
        cfg[key] = raw[key]
    return validate(cfg)


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


def save_raw(path, raw):
    """Validate, then replace the config file (write a copy, rename it
    over: a power cut leaves the old or the new file, never half of one)."""
    cfg = with_defaults(raw)
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
    """A copy of `raw` with KEY (or meter.KEY, one level deep) set,
    validated; raises ConfigError naming the key, value and what is allowed."""
    out = {}
    for k in raw:
        out[k] = raw[k]
    if "." in key:
        top, sub = key.split(".", 1)
        if top != "meter" or not sub or "." in sub:
            raise ConfigError("config key %r: only meter.KEY is nested" % key)
        meter = {}
        for k, v in (raw.get("meter") or DEFAULTS["meter"]).items():
            meter[k] = v
        meter[sub] = value
        out["meter"] = meter
    else:
        if key not in DEFAULTS:
            raise ConfigError("config key %r is unknown; allowed: %s" % (key, ", ".join(sorted(DEFAULTS))))
        out[key] = value
    with_defaults(out)
    return out
