# Technician console on the board's REPL UART (stdin/stdout; under the
# unix port the process's stdin, a pipe or a pseudo-terminal).
#
# Lines are read without blocking (select.poll on stdin) between the
# firmware loop's steps, so metering and sending go on while a technician
# types; while a CoAP exchange waits for the coordinator the client polls
# the console too (edge/coap.py, `idle`), so the console never waits on the
# network. Every command answers with one or more lines; a wrong command or
# value gets one line starting "error:" that says what was wrong and what
# is expected. Enabled by the config key "console" (default false), and
# always in safe mode (edge/safemode.py), where only help, status, config,
# log and reboot work.
#
# On an interactive stream (a board's REPL UART; a terminal under the unix
# port) typed characters are echoed, as the REPL does, and backspace
# erases; piped input is not echoed. Under the unix port a terminal is put
# into character mode (no line editing, no kernel echo: as a UART behaves)
# while the console runs and restored when it closes.
#
#   help                     the commands
#   status                   device id, firmware version, uptime, coordinator,
#                            link state, buffered readings, errors, free memory
#   reading                  live meter values (alias: meter)
#   config show              the whole config
#   config get KEY           one value (KEY or meter.KEY)
#   config set KEY VALUE     validated, written to config.json; some keys apply
#                            at once, the rest after `reboot`
#   config clear             safe mode only: start config.json again from the
#                            defaults (an unreadable file is kept as .bad)
#   calibrate WATTS [VOLTS]  gains from a reference load (CT meter, >= 60 W)
#   pubkey                   the device's public key (hex, compressed SEC1)
#   selftest                 key, signature, meter, flash and memory checks
#   log [N]                  the last N log lines (default 10)
#   reset                    factory reset, after typing YES
#   reset energy             the meter's energy reset, after typing YES
#   reboot                   persist and restart
#   update                   firmware versions, update progress, last rollback and why (edge/ota.py)

import json
import select
import sys

from edge import config as config_mod
from edge import hal, log
from shared import reading, secp256k1

TAG = "console"
CONFIRM = "YES"

HELP = """commands:
  help | status | reading | pubkey | selftest | log [N] | reboot | update
  config show | config get KEY | config set KEY VALUE   (KEY or meter.KEY)
  config clear              safe mode only: back to the defaults (old file kept as .bad)
  calibrate WATTS [VOLTS]   reference load >= 60 W (CT meter)
  reset                     factory reset: clears config and stored energy (asks YES)
  reset energy              zero the meter's energy counters (asks YES)"""


# Commands that work in safe mode (no meter, key or network needed).
SAFE_COMMANDS = ("help", "status", "config", "log", "reboot")

# Linux termios flags (the unix port only: a board has no termios).
_ICANON = 0o2
_ECHO = 0o10


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


def _char_mode(stream):
    """Interactive? A board's REPL stream always is. Under the unix port a
    terminal is: put it in character mode without kernel echo (the
    console echoes, as on a UART) and return the attributes to restore."""
    if hal.IS_BOARD:
        return True, None
    try:
        import termios

        fd = stream.fileno() if hasattr(stream, "fileno") else 0
        old = termios.tcgetattr(fd)
    except (ImportError, OSError, AttributeError, TypeError):
        return False, None  # a pipe or a file: no echo
    new = list(old)
    new[3] = old[3] & ~(_ICANON | _ECHO)
    try:
        termios.tcsetattr(fd, termios.TCSANOW, new)
    except OSError:
        return True, None
    return True, (fd, old)


class Console:
    def __init__(self, fw=None, stream=None):
        self.fw = fw
        self.stream = stream if stream is not None else sys.stdin
        self.poller = select.poll()
        self.poller.register(self.stream, select.POLLIN)
        self.interactive, self.saved_tty = _char_mode(self.stream)
        self.buf = ""
        self.open = True
        self.confirming = None  # the action awaiting YES
        self.busy = False  # inside a network exchange (poll with `wake`)
        self.deferred = None  # a confirmed action waiting for the loop
        self.commands = {
            "help": self.cmd_help, "status": self.cmd_status, "reading": self.cmd_reading, "meter": self.cmd_reading,
            "config": self.cmd_config, "calibrate": self.cmd_calibrate, "pubkey": self.cmd_pubkey,
            "selftest": self.cmd_selftest, "log": self.cmd_log, "reset": self.cmd_reset, "reboot": self.cmd_reboot,
            "update": self.cmd_update,
        }
        _out("console ready: type help")

    def attach(self, fw):
        """Serve another firmware object (safe mode -> the running meter)."""
        self.fw = fw

    def close(self):
        if self.open:
            self.open = False
            self.poller.unregister(self.stream)
        if self.saved_tty is not None:
            import termios

            try:
                termios.tcsetattr(self.saved_tty[0], termios.TCSANOW, self.saved_tty[1])
            except OSError:
                pass
            self.saved_tty = None

    def _needs_loop(self):
        return self.deferred is not None or not self.fw.running

    def poll(self, ms, wake=None):
        """Handle whatever input has arrived; wait up to `ms` for some, or
        until `wake` (the CoAP socket, during an exchange) is readable.
        True when the caller must stop waiting on the network and return
        to its loop: a reboot or a confirmed reset is waiting."""
        if wake is None and self.deferred is not None:
            action, self.deferred = self.deferred, None
            action()
        if not self.open:
            if wake is not None:
                p = select.poll()
                p.register(wake, select.POLLIN)
                p.poll(ms)
            elif ms > 0:
                hal.sleep_ms(ms)
            return self._needs_loop()
        self.busy = wake is not None
        if wake is not None:
            self.poller.register(wake, select.POLLIN)
        try:
            self._read(ms, wake)
        finally:
            if wake is not None:
                self.poller.unregister(wake)
            self.busy = False
        return self._needs_loop()

    def _read(self, ms, wake):
        waited = False
        while self.open:
            events = self.poller.poll(0 if waited else ms)
            waited = True
            if not any(e[0] is self.stream or e[0] == self.stream for e in events):
                return  # timeout, or only the socket woke us
            c = self.stream.read(1)
            if not c:
                # End of input (pipe closed): metering goes on without us.
                self.open = False
                self.poller.unregister(self.stream)
                if self.buf.strip():
                    self.handle(self.buf)
                self.buf = ""
                return
            if c in "\r\n":
                line, self.buf = self.buf, ""
                self._echo("\n")
                if line.strip():
                    self.handle(line)
                    # One command per call: the caller acts on it (safe
                    # mode retries after a config set) before the next.
                    return
            elif c in "\x08\x7f":
                if self.buf:
                    self.buf = self.buf[:-1]
                    self._echo("\x08 \x08")
            elif len(self.buf) < 200 and c >= " ":
                self.buf += c
                self._echo(c)
            if wake is not None and self._needs_loop():
                return

    def _echo(self, text):
        if self.interactive:
            sys.stdout.write(text)

    def handle(self, line):
        words = line.split()
        if self.confirming:
            action, self.confirming = self.confirming, None
            if line.strip() != CONFIRM:
                _out("reset cancelled")
            elif self.busy:
                # Not in the middle of a network exchange: the loop runs it
                # as soon as the exchange has stopped.
                self.deferred = action
            else:
                action()
            return
        cmd = self.commands.get(words[0].lower())
        if cmd is None:
            _out("error: unknown command %r: type help" % words[0])
            return
        reason = self._safe_reason()
        if reason is not None and words[0].lower() not in SAFE_COMMANDS:
            _out("error: %s is not available in safe mode (%s): fix the config with config set, or reboot" % (
                words[0], reason))
            return
        try:
            cmd(words[1:])
        except (ValueError, OSError) as e:
            msg = str(e)
            if not msg.startswith(words[0]):
                msg = "%s %s" % (words[0], msg)
            _out("error: " + msg)
        except Exception as e:  # a console must never take the meter down
            _out("error: %s failed: %r" % (words[0], e))

    def _safe_reason(self):
        return getattr(self.fw, "safe_reason", None)

    # -- commands ----------------------------------------------------------

    def _no_args(self, name, args):
        if args:
            raise ValueError("takes no arguments, got %r" % " ".join(args))

    def cmd_help(self, args):
        _out(HELP)

    def cmd_status(self, args):
        self._no_args("status", args)
        fw = self.fw
        cfg = fw.cfg
        from edge import firmware

        if self._safe_reason() is not None:
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

    def cmd_update(self, args):
        self._no_args("update", args)
        from edge.ota_session import console_lines

        for line in console_lines(self.fw):
            _out(line)

    def cmd_reading(self, args):
        self._no_args("reading", args)
        m = self.fw.read_meter(console=True)
        parts = ["import %d Wh" % m.import_wh, "export %d Wh" % m.export_wh, "power %s W" % m.power_w,
                 "voltage %s V" % m.voltage_v]
        for name, unit, value in m.extra_records():
            parts.append("%s %s%s" % (name, value, " " + unit if unit else ""))
        _out(", ".join(parts))

    def cmd_config(self, args):
        if not args or args[0] not in ("show", "get", "set", "clear"):
            raise ValueError("expects show, get KEY or set KEY VALUE")
        sub = args[0]
        if sub == "clear":
            self._no_args("config clear", args[1:])
            return self._clear()
        if self.fw.cfg is None:
            # Safe mode on a file that cannot be read at all.
            raise ValueError("%s: %s; `config clear` starts again from the defaults" % (sub, self.fw.safe_reason))
        if sub == "show":
            for k in sorted(self.fw.cfg):
                _out("%s = %s" % (k, json.dumps(_shown(k, self.fw.cfg[k]))))
            return
        if len(args) < 2:
            raise ValueError("%s needs a KEY" % sub)
        key = args[1]
        if sub == "get":
            if len(args) != 2:
                raise ValueError("get takes one KEY")
            _out("%s = %s" % (key, json.dumps(_shown(key, self._get(key)))))
            return
        if len(args) < 3:
            raise ValueError("set needs KEY VALUE")
        value = config_mod.parse_value(" ".join(args[2:]))
        path = self.fw.config_path
        # set_key refuses a wrong value before anything is written.
        new_raw = config_mod.set_key(config_mod.load_raw(path), key, value)
        if key == "outbox_size":
            from edge.outbox import check_fits

            # The flash must hold it (the meter would run with less).
            check_fits(config_mod.with_defaults(new_raw)["outbox_file"], value)
        cfg = config_mod.save_raw(path, new_raw, checked=True)
        left = config_mod.problems(cfg)
        shown = json.dumps(_shown(key, value))
        if self._safe_reason() is not None:
            self.fw.config_changed(cfg)
            if left:
                _out("%s = %s (saved; still to fix: %s)" % (key, shown, _first(left)))
            else:
                _out("%s = %s (saved; starting again)" % (key, shown))
            return
        if left:
            _out("%s = %s (saved; still to fix before a reboot: %s)" % (key, shown, _first(left)))
        elif key in config_mod.LIVE_KEYS:
            self.fw.cfg[key] = cfg[key]
            if key == "log_level":
                log.level = {"debug": log.DEBUG, "info": log.INFO, "warning": log.WARNING, "error": log.ERROR}[cfg[key]]
            if key in ("coordinator_host", "coordinator_port"):
                self.fw.client.retarget(cfg["coordinator_host"], cfg["coordinator_port"])
            _out("%s = %s (saved, applied)" % (key, json.dumps(cfg[key])))
        else:
            _out("%s = %s (saved; applies after reboot)" % (key, shown))

    def _get(self, key):
        cfg = self.fw.cfg
        if key.startswith("meter."):
            sub = key[6:]
            meter = cfg["meter"] if isinstance(cfg["meter"], dict) else {}
            if sub not in meter:
                raise ValueError("key %r is not set in the meter config (keys: %s)" % (key, ", ".join(sorted(meter))))
            return meter[sub]
        if key not in cfg:
            raise ValueError("key %r is unknown; allowed: %s" % (key, ", ".join(sorted(cfg))))
        return cfg[key]

    def _clear(self):
        if self._safe_reason() is None:
            raise ValueError("clear works in safe mode only: a running meter is cleared by reset (factory reset)")
        import os

        path = self.fw.config_path
        kept = None
        try:
            os.stat(path)
            kept = path + ".bad"
            os.rename(path, kept)
        except OSError:
            pass
        cfg = config_mod.save_raw(path, {})
        self.fw.config_changed(cfg)
        _out("config cleared to the defaults%s; starting again" % (" (the old file is kept as %s)" % kept if kept else ""))

    def cmd_calibrate(self, args):
        if not 1 <= len(args) <= 2:
            raise ValueError("expects WATTS [VOLTS] of a reference load, e.g. calibrate 2000 230")
        try:
            nums = [float(a) for a in args]
        except ValueError:
            raise ValueError("expects numbers, got %r" % " ".join(args))
        gains = self.fw.meter.calibrate(*nums)
        raw = config_mod.load_raw(self.fw.config_path)
        for k in gains:
            raw = config_mod.set_key(raw, "meter." + k, gains[k])
        self.fw.cfg = config_mod.save_raw(self.fw.config_path, raw)
        _out("calibrated: %s (saved)" % ", ".join("%s %s" % (k, gains[k]) for k in sorted(gains)))

    def cmd_pubkey(self, args):
        self._no_args("pubkey", args)
        import binascii

        _out(binascii.hexlify(self.fw.public_key).decode())

    def cmd_selftest(self, args):
        self._no_args("selftest", args)
        fw = self.fw
        checks = []

        def check(name, fn):
            try:
                detail = fn()
                checks.append((name, True, detail or ""))
            except Exception as e:
                checks.append((name, False, str(e)))

        def key():
            if secp256k1.public_key(fw.secret) != fw.public_key:
                raise ValueError("the key file no longer matches the running key")

        def sign():
            msg = reading.build(fw.secret, fw.public_key, 1, 0, 0, 0, 0, 0.0)
            r = reading.parse(msg)
            if not reading.verify(r, fw.public_key):
                raise ValueError("a fresh signature does not verify")

        def meter():
            m = fw.read_meter(console=True)
            return "%d Wh, %s W" % (m.import_wh, m.power_w)

        def flash():
            # Both regions read back; an empty journal is fine before the
            # first save (every persist_every readings).
            state = fw.journal.load()
            if state is not None and state.get("seq", 0) > fw.seq:
                raise ValueError("journal seq %d is ahead of the running seq %d" % (state["seq"], fw.seq))
            fw.outbox.peek()
            return "journal %s, %d buffered" % ("empty" if state is None else "seq %d" % state["seq"], len(fw.outbox))

        def memory():
            free = hal.free_memory()
            if free < 16384:
                raise ValueError("only %d bytes free" % free)
            return "%d bytes free" % free

        for name, fn in (("key", key), ("signature", sign), ("meter", meter), ("flash", flash), ("memory", memory)):
            check(name, fn)
        for name, ok, detail in checks:
            _out("%s %s%s" % ("PASS" if ok else "FAIL", name, (": " + detail) if detail else ""))
        _out("selftest %s" % ("passed" if all(c[1] for c in checks) else "FAILED"))

    def cmd_log(self, args):
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

    def cmd_reset(self, args):
        if args == ["energy"]:
            _out("energy reset zeroes the meter's energy counters (the old totals go out as a signed reset record)")
            self.confirming = self.energy_reset
        elif not args:
            _out("factory reset clears the config and the stored energy (the old totals go out as a signed reset record)")
            self.confirming = self.factory_reset
        else:
            raise ValueError("expects nothing (factory reset) or energy, got %r" % " ".join(args))
        _out("type %s to confirm, anything else cancels:" % CONFIRM)

    def energy_reset(self):
        try:
            self.fw.energy_reset()
        except OSError as e:
            _out("error: reset %s" % e)
            return
        _out("energy reset done: seq %d import %d Wh export %d Wh" % (self.fw.seq, self.fw.last_import, self.fw.last_export))

    def factory_reset(self):
        try:
            evidence = self.fw.factory_reset()
        except OSError as e:
            _out("error: reset %s" % e)
            return
        _out("factory reset done%s; rebooting" % ("" if evidence else " (the meter keeps its own counters)"))
        self.cmd_reboot([])

    def cmd_reboot(self, args):
        self._no_args("reboot", args)
        _out("rebooting")
        self.fw.reboot_requested = True
        self.fw.running = False
