# Technician console on the board's REPL UART (stdin/stdout; under the
# unix port the process's stdin, a pipe or a pseudo-terminal).
#
# Lines are read without blocking (select.poll on stdin) between the
# firmware loop's steps, so metering and sending go on while a technician
# types. Every command answers with one or more lines; a wrong command or
# value gets one line starting "error:" that says what was wrong and what
# is expected. Enabled by the config key "console" (default false).
#
#   help                     the commands
#   status                   device id, firmware version, uptime, coordinator,
#                            link state, buffered readings, errors, free memory
#   reading                  live meter values (alias: meter)
#   config show              the whole config
#   config get KEY           one value (KEY or meter.KEY)
#   config set KEY VALUE     validated, written to config.json; some keys apply
#                            at once, the rest after `reboot`
#   calibrate WATTS [VOLTS]  gains from a reference load (CT meter, >= 60 W)
#   pubkey                   the device's public key (hex, compressed SEC1)
#   selftest                 key, signature, meter, flash and memory checks
#   log [N]                  the last N log lines (default 10)
#   reset                    factory reset, after typing YES
#   reset energy             the meter's energy reset, after typing YES
#   reboot                   persist and restart

import json
import select
import sys

from edge import config as config_mod
from edge import hal, log
from shared import reading, secp256k1

TAG = "console"
CONFIRM = "YES"

HELP = """commands:
  help | status | reading | pubkey | selftest | log [N] | reboot
  config show | config get KEY | config set KEY VALUE   (KEY or meter.KEY)
  calibrate WATTS [VOLTS]   reference load >= 60 W (CT meter)
  reset                     factory reset: clears config and stored energy (asks YES)
  reset energy              zero the meter's energy counters (asks YES)"""


def _out(line):
    print(line)


class Console:
    def __init__(self, fw, stream=None):
        self.fw = fw
        self.stream = stream if stream is not None else sys.stdin
        self.poller = select.poll()
        self.poller.register(self.stream, select.POLLIN)
        self.buf = ""
        self.open = True
        self.confirming = None  # the action awaiting YES
        self.commands = {
            "help": self.cmd_help, "status": self.cmd_status, "reading": self.cmd_reading, "meter": self.cmd_reading,
            "config": self.cmd_config, "calibrate": self.cmd_calibrate, "pubkey": self.cmd_pubkey,
            "selftest": self.cmd_selftest, "log": self.cmd_log, "reset": self.cmd_reset, "reboot": self.cmd_reboot,
        }
        _out("console ready: type help")

    def poll(self, ms):
        """Handle whatever input has arrived; wait up to `ms` for some."""
        if not self.open:
            if ms > 0:
                hal.sleep_ms(ms)
            return
        waited = False
        while self.open:
            events = self.poller.poll(0 if waited else ms)
            waited = True
            if not events:
                return
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
                if line.strip():
                    self.handle(line)
            elif c in "\x08\x7f":
                self.buf = self.buf[:-1]
            elif len(self.buf) < 200:
                self.buf += c

    def handle(self, line):
        words = line.split()
        if self.confirming:
            action, self.confirming = self.confirming, None
            if line.strip() == CONFIRM:
                action()
            else:
                _out("reset cancelled")
            return
        cmd = self.commands.get(words[0].lower())
        if cmd is None:
            _out("error: unknown command %r: type help" % words[0])
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

        errs = " ".join("%s=%d" % (k, v) for k, v in sorted(fw.errors.counts.items()))
        _out("device %s (%s) firmware %s" % (fw.device, cfg["device_name"], firmware.VERSION))
        _out("uptime %d s, seq %d, import %d Wh, export %d Wh" % (fw.uptime_s(), fw.seq, fw.last_import, fw.last_export))
        _out("coordinator coap://%s:%d link %s" % (cfg["coordinator_host"], cfg["coordinator_port"], fw.link))
        _out("buffered %d, produced %d, delivered %d, rejected %d, merged %d" % (
            len(fw.outbox), fw.produced, fw.delivered, fw.rejected, fw.outbox.dropped))
        _out("errors %s; last %s" % (errs, fw.errors.last or "none"))
        _out("meter %s, free memory %d bytes" % (cfg["meter"]["type"], hal.free_memory()))

    def cmd_reading(self, args):
        self._no_args("reading", args)
        m = self.fw.meter.read(self.fw.clock.now())
        parts = ["import %d Wh" % m.import_wh, "export %d Wh" % m.export_wh, "power %s W" % m.power_w,
                 "voltage %s V" % m.voltage_v]
        for name, unit, value in m.extra_records():
            parts.append("%s %s%s" % (name, value, " " + unit if unit else ""))
        _out(", ".join(parts))

    def cmd_config(self, args):
        if not args or args[0] not in ("show", "get", "set"):
            raise ValueError("expects show, get KEY or set KEY VALUE")
        sub = args[0]
        if sub == "show":
            for k in sorted(self.fw.cfg):
                _out("%s = %s" % (k, json.dumps(self.fw.cfg[k])))
            return
        if len(args) < 2:
            raise ValueError("%s needs a KEY" % sub)
        key = args[1]
        if sub == "get":
            if len(args) != 2:
                raise ValueError("get takes one KEY")
            _out("%s = %s" % (key, json.dumps(self._get(key))))
            return
        if len(args) < 3:
            raise ValueError("set needs KEY VALUE")
        value = config_mod.parse_value(" ".join(args[2:]))
        raw = config_mod.load_raw(self.fw.config_path)
        new_raw = config_mod.set_key(raw, key, value)
        if key == "outbox_size":
            from edge.outbox import check_fits

            check_fits(self.fw.cfg["outbox_file"], value)  # the flash must hold it
        cfg = config_mod.save_raw(self.fw.config_path, new_raw)
        if key in config_mod.LIVE_KEYS:
            self.fw.cfg[key] = cfg[key]
            if key == "log_level":
                log.level = {"debug": log.DEBUG, "info": log.INFO, "warning": log.WARNING, "error": log.ERROR}[cfg[key]]
            _out("%s = %s (saved, applied)" % (key, json.dumps(cfg[key])))
        else:
            _out("%s = %s (saved; applies after reboot)" % (key, json.dumps(value)))

    def _get(self, key):
        cfg = self.fw.cfg
        if key.startswith("meter."):
            sub = key[6:]
            if sub not in cfg["meter"]:
                raise ValueError("key %r is not set in the meter config (keys: %s)" % (key, ", ".join(sorted(cfg["meter"]))))
            return cfg["meter"][sub]
        if key not in cfg:
            raise ValueError("key %r is unknown; allowed: %s" % (key, ", ".join(sorted(cfg))))
        return cfg[key]

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
            m = fw.meter.read(fw.clock.now())
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
