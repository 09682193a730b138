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
#
# The commands themselves are in edge/commands.py (selftest in
# edge/selftest.py), imported when a line is complete and released after
# it: frozen into the image their code takes no heap, but each function
# object of an imported module does, and the meter runs for months between
# two commands.

import select
import sys
from micropython import const

from edge import hal

CONFIRM = "YES"
# Commands, and those that work in safe mode (no meter, key or network needed).
COMMANDS = ("help", "status", "reading", "meter", "config", "calibrate", "pubkey", "selftest", "log", "reset", "reboot",
            "update")
SAFE_COMMANDS = ("help", "status", "config", "log", "reboot")

# Linux termios flags (the unix port only: a board has no termios).
_ICANON = const(0o2)
_ECHO = const(0o10)


def _out(line):
    print(line)


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
                self.deferred = lambda: action(self)
            else:
                action(self)
            return
        name = words[0].lower()
        if name not in COMMANDS:
            _out("error: unknown command %r: type help" % words[0])
            return
        reason = getattr(self.fw, "safe_reason", None)
        if reason is not None and name not in SAFE_COMMANDS:
            _out("error: %s is not available in safe mode (%s): fix the config with config set, or reboot" % (
                words[0], reason))
            return
        try:
            if name == "selftest":
                from edge import selftest as module
            else:
                from edge import commands as module
            getattr(module, "cmd_" + ("reading" if name == "meter" else name))(self, words[1:])
        except (ValueError, OSError) as e:
            msg = str(e)
            if not msg.startswith(words[0]):
                msg = "%s %s" % (words[0], msg)
            _out("error: " + msg)
        except Exception as e:  # a console must never take the meter down
            _out("error: %s failed: %r" % (words[0], e))
        finally:
            import edge

            for name in ("edge.commands", "edge.selftest", "edge.config", "edge.meters.checks"):
                edge.release(name)
