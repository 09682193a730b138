"""The [gpio] section of the coordinator's configuration, and opening the
relays and LEDs it describes.

    [gpio]
    backend = "auto"            # auto (the Pi's GPIO on a Pi, else simulated) | rpi | simulated
    leds = true                 # status and fault LEDs on their hardware/ pins
    journal = ""                # simulated backend: append transitions to this file

    [gpio.relays.relay_1]       # pin from hardware/coordinator_pi.json
    safe_state = "disconnected" # what a crash or restart returns it to

    [gpio.relays.heat_pump]
    pin = 24                    # any free header pin; checked against the Pi's map
    safe_state = "connected"
    active_high = false

>>> s = GpioSettings(relays={"relay_1": {}}).validate()
>>> s.relay_settings()[0]
RelaySettings(name='relay_1', pin=17, safe_state='disconnected', active_high=True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .gpio import BACKENDS, FailSafe, GpioBackend, Relay, StatusLed, open_backend, pin_for


class GpioSettingsError(ValueError):
    """A [gpio] setting is missing, of the wrong type or out of range."""


_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_RELAY_KEYS = ("pin", "safe_state", "active_high")


@dataclass(frozen=True)
class RelaySettings:
    name: str
    pin: int
    safe_state: str = "disconnected"
    active_high: bool = True


@dataclass
class GpioSettings:
    backend: str = "auto"
    leds: bool = True
    journal: str = ""
    relays: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self, section: str = "gpio") -> "GpioSettings":
        if self.backend not in BACKENDS:
            raise GpioSettingsError(f"{section}.backend={self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if not isinstance(self.leds, bool):
            raise GpioSettingsError(f"{section}.leds={self.leds!r}: expected true or false")
        if not isinstance(self.relays, dict):
            raise GpioSettingsError(f"{section}.relays={self.relays!r}: expected a table of relays")
        relays = self.relay_settings(section)
        self._check_pins(section, relays)
        return self

    def relay_settings(self, section: str = "gpio") -> list[RelaySettings]:
        out = []
        for name, raw in self.relays.items():
            key = f"{section}.relays.{name}"
            if not _NAME.match(name):
                raise GpioSettingsError(f"{key}: relay names use 1-32 of A-Z a-z 0-9 _ -")
            if not isinstance(raw, dict):
                raise GpioSettingsError(f"{key}={raw!r}: expected a table")
            for k in raw:
                if k not in _RELAY_KEYS:
                    raise GpioSettingsError(f"{key}.{k}: unknown setting; allowed: {', '.join(_RELAY_KEYS)}")
            pin = raw.get("pin")
            if pin is None:
                try:
                    pin = pin_for(name)
                except KeyError:
                    raise GpioSettingsError(f"{key}.pin: missing; expected a BCM GPIO number (only relay_1 and "
                                            "relay_2 have a pin in hardware/coordinator_pi.json)") from None
            if isinstance(pin, bool) or not isinstance(pin, int) or not 2 <= pin <= 27:
                raise GpioSettingsError(f"{key}.pin={pin!r}: expected a BCM GPIO number in 2..27")
            safe = raw.get("safe_state", "disconnected")
            if safe not in ("connected", "disconnected"):
                raise GpioSettingsError(f"{key}.safe_state={safe!r}: expected connected or disconnected")
            active_high = raw.get("active_high", True)
            if not isinstance(active_high, bool):
                raise GpioSettingsError(f"{key}.active_high={active_high!r}: expected true or false")
            out.append(RelaySettings(name, pin, safe, active_high))
        return out

    def _check_pins(self, section: str, relays: list[RelaySettings]) -> None:
        from microgrid.hardware.boards import PinError, coordinator_assignments, validate_pins

        hw = coordinator_assignments()
        uses: dict[str, tuple[int, str]] = {}
        # The LEDs and the RS-485 lines are always wired; a relay of
        # hardware/ may be configured under its own name.
        for name, a in hw.items():
            if name.startswith("relay_") or name.startswith("console_"):
                continue
            uses[name] = (a.gpio, "out" if a.mode == "out" else "in")
        for r in relays:
            uses[f"{section}.relays.{r.name}"] = (r.pin, "out")
        try:
            validate_pins("raspberry-pi", uses, wifi=False)
        except PinError as e:
            raise GpioSettingsError(f"{section}: " + "; ".join(e.problems)) from None


@dataclass
class GpioDevices:
    backend: GpioBackend
    relays: dict[str, Relay]
    status_led: StatusLed | None
    fault_led: StatusLed | None
    fail_safe: FailSafe

    def close(self) -> None:
        """Relays to their safe states, LEDs off."""
        for relay in self.relays.values():
            relay.close()
        for led in (self.status_led, self.fault_led):
            if led is not None:
                led.close()
        self.backend.close()


def open_gpio(settings: GpioSettings, backend: GpioBackend | None = None) -> GpioDevices:
    """Open the backend and every relay (each starting in its safe state)
    and LED. The caller installs `fail_safe` (signals are the app's)."""
    settings.validate()
    backend = backend or open_backend(settings.backend, journal=settings.journal or None)
    relays = {r.name: Relay(backend, r.pin, r.safe_state, r.active_high, r.name) for r in settings.relay_settings()}
    status = fault = None
    if settings.leds:
        status = StatusLed(backend, pin_for("status_led"), name="status_led")
        fault = StatusLed(backend, pin_for("fault_led"), name="fault_led")
    return GpioDevices(backend, relays, status, fault, FailSafe(relays.values()))
