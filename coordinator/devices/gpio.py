"""One GPIO layer for the coordinator's relays and LEDs.

Backends:
- `RpiGpio`: RPi.GPIO in BCM numbering, imported only when this backend is
  opened (so the module imports anywhere). On a Raspberry Pi 5 the GPIO
  header hangs off the RP1 chip, which RPi.GPIO cannot drive: install the
  `rpi-lgpio` package instead (`pip install rpi-lgpio`, after removing
  RPi.GPIO); it provides the same `RPi.GPIO` module on top of lgpio, so
  nothing here changes.
- `SimulatedGpio`: levels in memory, every transition recorded with its
  time (and optionally appended to a JSON-lines journal file, so a test can
  see what a process did before it died).

`Relay` speaks in the domain: `connect()` closes the contacts (power
flows), `disconnect()` opens them. Relays fail safe: constructing one
drives its configured safe state before anything else happens (so a
restart after a crash begins safe), and `FailSafe` returns every relay to
its safe state at exit, on an uncaught exception and on the signals the
app hands it. Hardware must agree: wire each relay so that an unpowered
Pi (pin floating, pulled down on the driver board) gives the safe state;
see hardware/coordinator-pi.md.

Pin numbers come from hardware/coordinator_pi.json (`pin_for`).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterable, Protocol


class GpioError(RuntimeError):
    """A GPIO backend could not be opened or a pin could not be driven."""


class GpioBackend(Protocol):
    name: str

    def setup_output(self, pin: int, level: bool) -> None:
        """Make `pin` an output, driving `level` from the first instant."""

    def write(self, pin: int, level: bool) -> None: ...

    def read(self, pin: int) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Transition:
    t: float  # the backend's clock (time.time() unless one is passed in)
    pin: int
    level: bool


class SimulatedGpio:
    """A GPIO backend for machines without a header: keeps levels in memory
    and records every transition (setup counts as one)."""

    name = "simulated"

    def __init__(self, clock: Callable[[], float] = time.time, journal: str | Path | None = None) -> None:
        self.clock = clock
        self.levels: dict[int, bool] = {}
        self.transitions: list[Transition] = []
        self.journal = Path(journal) if journal else None
        self._lock = threading.Lock()
        self.closed = False

    def _record(self, pin: int, level: bool) -> None:
        with self._lock:
            if self.levels.get(pin) == level:
                return
            self.levels[pin] = level
            tr = Transition(self.clock(), pin, level)
            self.transitions.append(tr)
            if self.journal is not None:
                with open(self.journal, "a") as f:
                    f.write(json.dumps({"t": tr.t, "pin": pin, "level": level}) + "\n")
                    f.flush()
                    os.fsync(f.fileno())

    def setup_output(self, pin: int, level: bool) -> None:
        self._record(pin, level)

    def write(self, pin: int, level: bool) -> None:
        if pin not in self.levels:
            raise GpioError(f"GPIO{pin} written before setup_output; expected a configured output pin")
        self._record(pin, level)

    def read(self, pin: int) -> bool:
        if pin not in self.levels:
            raise GpioError(f"GPIO{pin} read before setup_output; expected a configured pin")
        return self.levels[pin]

    def history(self, pin: int) -> list[bool]:
        return [t.level for t in self.transitions if t.pin == pin]

    def close(self) -> None:
        self.closed = True


def read_journal(path: str | Path) -> list[Transition]:
    """The transitions a `SimulatedGpio(journal=path)` wrote, in order."""
    out = []
    for line in Path(path).read_text().splitlines():
        d = json.loads(line)
        out.append(Transition(d["t"], d["pin"], d["level"]))
    return out


class RpiGpio:
    """RPi.GPIO (or rpi-lgpio on a Pi 5), BCM numbering."""

    name = "rpi"

    def __init__(self) -> None:
        try:
            import RPi.GPIO as GPIO  # type: ignore[import-not-found, import-untyped]
        except (ImportError, RuntimeError) as e:
            raise GpioError(f"cannot open the Raspberry Pi GPIO ({e}); expected RPi.GPIO on a Pi 3/4 "
                            "or rpi-lgpio on a Pi 5 (`pip install rpi-lgpio`)") from None
        self.GPIO: Any = GPIO
        GPIO.setwarnings(False)
        GPIO.setmode(GPIO.BCM)

    def setup_output(self, pin: int, level: bool) -> None:
        self.GPIO.setup(pin, self.GPIO.OUT, initial=self.GPIO.HIGH if level else self.GPIO.LOW)

    def write(self, pin: int, level: bool) -> None:
        self.GPIO.output(pin, self.GPIO.HIGH if level else self.GPIO.LOW)

    def read(self, pin: int) -> bool:
        return bool(self.GPIO.input(pin))

    def close(self) -> None:
        # Pins stay driven at their last (safe) level: GPIO.cleanup() would
        # float them and leave the relays to the pull resistors.
        pass


def on_raspberry_pi() -> bool:
    try:
        return "Raspberry Pi" in Path("/proc/device-tree/model").read_text(errors="replace")
    except OSError:
        return False


BACKENDS = ("auto", "rpi", "simulated")


def open_backend(kind: str = "auto", journal: str | Path | None = None) -> GpioBackend:
    """"rpi", "simulated", or "auto": the Pi's GPIO on a Raspberry Pi, the
    simulation elsewhere."""
    if kind not in BACKENDS:
        raise GpioError(f"gpio backend {kind!r}: expected one of {', '.join(BACKENDS)}")
    if kind == "rpi" or (kind == "auto" and on_raspberry_pi()):
        return RpiGpio()
    return SimulatedGpio(journal=journal)


def pin_for(function: str) -> int:
    """The BCM pin of a coordinator function from hardware/coordinator_pi.json."""
    from microgrid.hardware.boards import coordinator_pin

    return coordinator_pin(function)


class RelayState(StrEnum):
    CONNECTED = "connected"  # contacts closed: power flows
    DISCONNECTED = "disconnected"  # contacts open


class Relay:
    """A relay driving a contactor. `active_high`: the GPIO level that
    energises the coil. The coil energised means connected (normally-open
    contacts); for normally-closed contacts pass `active_high=False`."""

    def __init__(self, backend: GpioBackend, pin: int, safe_state: RelayState | str = RelayState.DISCONNECTED,
                 active_high: bool = True, name: str = "relay") -> None:
        try:
            self.safe_state = RelayState(safe_state)
        except ValueError:
            raise GpioError(f"relay {name} safe_state={safe_state!r}: expected connected or disconnected") from None
        self.backend = backend
        self.pin = pin
        self.active_high = active_high
        self.name = name
        self._state = self.safe_state
        self.closed = False
        # Start safe: the pin is driven to the safe level as it becomes an
        # output, never passing through the other state.
        backend.setup_output(pin, self._level(self.safe_state))

    def _level(self, state: RelayState) -> bool:
        return (state is RelayState.CONNECTED) == self.active_high

    def _drive(self, state: RelayState) -> None:
        if self.closed:
            raise GpioError(f"relay {self.name} (GPIO{self.pin}) is closed; expected an open relay")
        self.backend.write(self.pin, self._level(state))
        self._state = state

    def connect(self) -> None:
        """Close the contacts: power flows."""
        self._drive(RelayState.CONNECTED)

    def disconnect(self) -> None:
        """Open the contacts."""
        self._drive(RelayState.DISCONNECTED)

    @property
    def state(self) -> RelayState:
        return self._state

    @property
    def is_connected(self) -> bool:
        return self._state is RelayState.CONNECTED

    def to_safe_state(self) -> None:
        """Drive the safe state; works even after close()."""
        self.backend.write(self.pin, self._level(self.safe_state))
        self._state = self.safe_state

    def close(self) -> None:
        if not self.closed:
            self.to_safe_state()
            self.closed = True

    def __repr__(self) -> str:
        return f"Relay({self.name!r}, GPIO{self.pin}, {self._state}, safe={self.safe_state})"


class LedPattern(StrEnum):
    OFF = "off"
    ON = "on"
    SLOW = "slow"  # 1 Hz: starting
    FAST = "fast"  # 4 Hz: degraded


_PERIOD = {LedPattern.SLOW: 1.0, LedPattern.FAST: 0.25}


class StatusLed:
    """An LED with a pattern. Blinking is driven by `tick(now)` from the
    app's loop (no thread, no clock read here)."""

    def __init__(self, backend: GpioBackend, pin: int, active_high: bool = True, name: str = "status_led") -> None:
        self.backend = backend
        self.pin = pin
        self.active_high = active_high
        self.name = name
        self.pattern = LedPattern.OFF
        self.lit = False
        backend.setup_output(pin, not active_high)

    def _set(self, lit: bool) -> None:
        if lit != self.lit:
            self.backend.write(self.pin, lit == self.active_high)
            self.lit = lit

    def on(self) -> None:
        self.show(LedPattern.ON)

    def off(self) -> None:
        self.show(LedPattern.OFF)

    def show(self, pattern: LedPattern | str, now: float = 0.0) -> None:
        self.pattern = LedPattern(pattern)
        self.tick(now)

    def tick(self, now: float) -> None:
        if self.pattern is LedPattern.ON:
            self._set(True)
        elif self.pattern is LedPattern.OFF:
            self._set(False)
        else:
            period = _PERIOD[self.pattern]
            self._set((now % period) < period / 2)

    def close(self) -> None:
        self._set(False)


class FailSafe:
    """Returns relays to their safe state when the process ends: at exit
    (also after an uncaught exception) and on the signals passed to
    `install`. The app calls `restore()` itself on a graceful shutdown. A
    SIGKILL or power cut runs nothing: then the next start's `Relay(...)`
    and the hardware's pull resistors give the safe state."""

    def __init__(self, relays: Iterable[Relay] = ()) -> None:
        self.relays: list[Relay] = list(relays)
        self._installed = False
        self._previous: dict[int, Any] = {}

    def add(self, relay: Relay) -> None:
        self.relays.append(relay)

    def restore(self) -> list[str]:
        """Drive every relay safe; the failures, one line each (never raises:
        one stuck pin must not keep the others from going safe)."""
        errors = []
        for relay in self.relays:
            try:
                relay.to_safe_state()
            except Exception as e:  # noqa: BLE001 - keep going for the others
                errors.append(f"relay {relay.name} (GPIO{relay.pin}): cannot return to {relay.safe_state}: {e}")
        return errors

    def install(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGHUP)) -> None:
        """Register the at-exit hook and, for each signal, a handler that
        restores the safe states and then does what the previous handler
        did (the default: exit with 128 + signal)."""
        if self._installed:
            return
        self._installed = True
        atexit.register(self.restore)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.restore()
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:
            raise SystemExit(128 + signum)
