# The technician console's commands (see edge/console.py for the list and
# how lines are read). Each is cmd_NAME(console, args); the console imports
# this module when a command is typed and releases it after the command, so
# while the console waits it costs only its line reader (frozen bytecode
# costs no heap, but each function of an imported module does: ~50 bytes).

import json

from edge import hal, log

CONFIRM = "YES"

HELP = """commands:
  help | status | reading | pubkey | selftest | log [N] | reboot | update
  config show | config get KEY | config set KEY VALUE   (KEY or meter.KEY)
  config clear              safe mode only: back to the defaults (old file kept as .bad)
  calibrate WATTS [VOLTS]   reference load >= 60 W (CT meter)
  reset                     factory reset: clears config and stored energy (asks YES)
  reset energy              zero the meter's energy counters (asks YES)"""


def _out(line):
    print(line)


def _shown(key, value):
    """A config value as the console may print it: never the Wi-Fi password."""
    if key == "wifi" and isinstance(value, dict) and "password" in value:
        value = dict(value)
        value["password"] = "***"
    return value


def _first(problems):
    for key in sorted(problems):
        return str(problems[key])


def _safe_reason(con):
    return getattr(con.fw, "safe_reason", None)


def _no_args(name, args):
    if args:
        raise ValueError("takes no arguments, got %r" % " ".join(args))

def cmd_help(con, args):
    _out(HELP)

def cmd_status(con, args):
    _no_args("status", args)
    fw = con.fw
    cfg = fw.cfg
    from edge import firmware

    if _safe_reason(con) is not None:
        _out("safe mode: %s" % fw.safe_reason)
        _out("firmware %s, uptime %d s, start-up attempts %d, next in %d s" % (
            firmware.VERSION, fw.uptime_s(), fw.attempts, fw.retry_in_s()))
        _out("config %s; free memory %d bytes" % (fw.config_path, hal.free_memory()))
        return

    errs = " ".join("%s=%d" % (k, v) for k, v in sorted(fw.errors.counts.items()))
    _out("device %s (%s) firmware %s" % (fw.device, cfg["device_name"], firmware.VERSION))
    _out("uptime %d s, seq %d, import %d Wh, export %d Wh" % (fw.uptime_s(), fw.seq, fw.last_import, fw.last_export))
    _out("coordinator coap://%s:%d link %s" % (cfg["coordinator_host"], cfg["coordinator_port"], fw.link))
    _out("buffered %d, produced %d, delivered %d, rejected %d, merged %d" % (
        len(fw.outbox), fw.produced, fw.delivered, fw.rejected, fw.outbox.dropped))
    _out("errors %s; last %s" % (errs, fw.errors.last or "none"))
    _out("meter %s, free memory %d bytes" % (cfg["meter"]["type"], hal.free_memory()))

def cmd_update(con, args):
    _no_args("update", args)
    from edge.ota_session import console_lines

    for line in console_lines(con.fw):
        _out(line)


def cmd_reading(con, args):
    _no_args("reading", args)
    m = con.fw.read_meter(console=True)
    parts = ["import %d Wh" % m.import_wh, "export %d Wh" % m.export_wh, "power %s W" % m.power_w,
             "voltage %s V" % m.voltage_v]
    for name, unit, value in m.extra_records():
        parts.append("%s %s%s" % (name, value, " " + unit if unit else ""))
    _out(", ".join(parts))

def cmd_config(con, args):
    from edge import config as config_mod

    if not args or args[0] not in ("show", "get", "set", "clear"):
        raise ValueError("expects show, get KEY or set KEY VALUE")
    sub = args[0]
    if sub == "clear":
        _no_args("config clear", args[1:])
        return _clear(con)
    if con.fw.cfg is None:
        # Safe mode on a file that cannot be read at all.
        raise ValueError("%s: %s; `config clear` starts again from the defaults" % (sub, con.fw.safe_reason))
    if sub == "show":
        for k in sorted(con.fw.cfg):
            _out("%s = %s" % (k, json.dumps(_shown(k, con.fw.cfg[k]))))
        return
    if len(args) < 2:
        raise ValueError("%s needs a KEY" % sub)
    key = args[1]
    if sub == "get":
        if len(args) != 2:
            raise ValueError("get takes one KEY")
        _out("%s = %s" % (key, json.dumps(_shown(key, _get(con, key)))))
        return
    if len(args) < 3:
        raise ValueError("set needs KEY VALUE")
    value = config_mod.parse_value(" ".join(args[2:]))
    path = con.fw.config_path
    # set_key refuses a wrong value before anything is written.
    new_raw = config_mod.set_key(config_mod.load_raw(path), key, value)
    if key == "outbox_size":
        from edge.outbox import check_fits

        # The flash must hold it (the meter would run with less).
        check_fits(config_mod.with_defaults(new_raw)["outbox_file"], value)
    cfg = config_mod.save_raw(path, new_raw, checked=True)
    left = config_mod.problems(cfg)
    shown = json.dumps(_shown(key, value))
    if _safe_reason(con) is not None:
        con.fw.config_changed(cfg)
        if left:
            _out("%s = %s (saved; still to fix: %s)" % (key, shown, _first(left)))
        else:
            _out("%s = %s (saved; starting again)" % (key, shown))
        return
    if left:
        _out("%s = %s (saved; still to fix before a reboot: %s)" % (key, shown, _first(left)))
    elif key in config_mod.LIVE_KEYS:
        con.fw.cfg[key] = cfg[key]
        if key == "log_level":
            log.set_level(cfg[key])
        if key in ("coordinator_host", "coordinator_port"):
            con.fw.client.retarget(cfg["coordinator_host"], cfg["coordinator_port"])
        _out("%s = %s (saved, applied)" % (key, json.dumps(cfg[key])))
    else:
        _out("%s = %s (saved; applies after reboot)" % (key, shown))

def _get(con, key):
    cfg = con.fw.cfg
    if key.startswith("meter."):
        sub = key[6:]
        meter = cfg["meter"] if isinstance(cfg["meter"], dict) else {}
        if sub not in meter:
            raise ValueError("key %r is not set in the meter config (keys: %s)" % (key, ", ".join(sorted(meter))))
        return meter[sub]
    if key not in cfg:
        raise ValueError("key %r is unknown; allowed: %s" % (key, ", ".join(sorted(cfg))))
    return cfg[key]

def _clear(con):
    from edge import config as config_mod

    if _safe_reason(con) is None:
        raise ValueError("clear works in safe mode only: a running meter is cleared by reset (factory reset)")
    import os

    path = con.fw.config_path
    kept = None
    try:
        os.stat(path)
        kept = path + ".bad"
        os.rename(path, kept)
    except OSError:
        pass
    cfg = config_mod.save_raw(path, {})
    con.fw.config_changed(cfg)
    _out("config cleared to the defaults%s; starting again" % (" (the old file is kept as %s)" % kept if kept else ""))

def cmd_calibrate(con, args):
    from edge import config as config_mod

    if not 1 <= len(args) <= 2:
        raise ValueError("expects WATTS [VOLTS] of a reference load, e.g. calibrate 2000 230")
    try:
        nums = [float(a) for a in args]
    except ValueError:
        raise ValueError("expects numbers, got %r" % " ".join(args))
    gains = con.fw.meter.calibrate(*nums)
    raw = config_mod.load_raw(con.fw.config_path)
    for k in gains:
        raw = config_mod.set_key(raw, "meter." + k, gains[k])
    con.fw.cfg = config_mod.save_raw(con.fw.config_path, raw)
    _out("calibrated: %s (saved)" % ", ".join("%s %s" % (k, gains[k]) for k in sorted(gains)))

def cmd_pubkey(con, args):
    _no_args("pubkey", args)
    import binascii

    _out(binascii.hexlify(con.fw.public_key).decode())

def cmd_log(con, args):
    n = 10
    if args:
        try:
            n = int(args[0])
        except ValueError:
            raise ValueError("expects a number of lines, got %r" % args[0])
        if n < 1:
            raise ValueError("expects a positive number of lines, got %d" % n)
    for line in log.recent()[-n:]:
        _out(line)

def cmd_reset(con, args):
    if args == ["energy"]:
        _out("energy reset zeroes the meter's energy counters (the old totals go out as a signed reset record)")
        con.confirming = energy_reset
    elif not args:
        _out("factory reset clears the config and the stored energy (the old totals go out as a signed reset record)")
        con.confirming = factory_reset
    else:
        raise ValueError("expects nothing (factory reset) or energy, got %r" % " ".join(args))
    _out("type %s to confirm, anything else cancels:" % CONFIRM)

def energy_reset(con):
    try:
        con.fw.energy_reset()
    except OSError as e:
        _out("error: reset %s" % e)
        return
    _out("energy reset done: seq %d import %d Wh export %d Wh" % (con.fw.seq, con.fw.last_import, con.fw.last_export))

def factory_reset(con):
    try:
        evidence = con.fw.factory_reset()
    except OSError as e:
        _out("error: reset %s" % e)
        return
    _out("factory reset done%s; rebooting" % ("" if evidence else " (the meter keeps its own counters)"))
    cmd_reboot(con, [])

def cmd_reboot(con, args):
    _no_args("reboot", args)
    _out("rebooting")
    con.fw.reboot_requested = True
    con.fw.running = False
