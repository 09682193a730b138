"""Relays and LEDs through one GPIO layer; relays fail safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from microgrid.coordinator.devices.gpio import (
    FailSafe,
    GpioError,
    LedPattern,
    Relay,
    RelayState,
    SimulatedGpio,
    StatusLed,
    Transition,
    open_backend,
    pin_for,
    read_journal,
)
from microgrid.coordinator.devices.gpio_settings import GpioSettings, GpioSettingsError, open_gpio


class TickClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def test_relay_starts_in_its_safe_state_before_anything_else() -> None:
    gpio = SimulatedGpio(clock=TickClock())
    relay = Relay(gpio, 17, "disconnected")
    assert relay.state == RelayState.DISCONNECTED == "disconnected"
    assert gpio.transitions == [Transition(1001.0, 17, False)]
    nc = Relay(gpio, 27, "connected", active_high=False)
    assert nc.state == "connected" and gpio.levels[27] is False


def test_connect_and_disconnect_record_every_transition_with_its_time() -> None:
    gpio = SimulatedGpio(clock=TickClock())
    relay = Relay(gpio, 17)
    relay.connect()
    relay.connect()  # no change, no transition
    relay.disconnect()
    relay.connect()
    assert gpio.history(17) == [False, True, False, True]
    assert [t.t for t in gpio.transitions] == [1001.0, 1002.0, 1003.0, 1004.0]
    assert relay.is_connected and str(relay.state) == "connected"


def test_active_low_relay_inverts_the_level_not_the_meaning() -> None:
    gpio = SimulatedGpio()
    relay = Relay(gpio, 5, active_high=False)
    assert gpio.levels[5] is True  # coil off = disconnected
    relay.connect()
    assert gpio.levels[5] is False and relay.state == "connected"


def test_close_returns_to_safe_state_and_refuses_further_switching() -> None:
    gpio = SimulatedGpio()
    relay = Relay(gpio, 17, "disconnected")
    relay.connect()
    relay.close()
    assert relay.state == "disconnected" and gpio.levels[17] is False
    with pytest.raises(GpioError, match="relay relay .GPIO17. is closed"):
        relay.connect()


def test_bad_safe_state_is_named() -> None:
    with pytest.raises(GpioError, match="safe_state='open': expected connected or disconnected"):
        Relay(SimulatedGpio(), 17, "open")


def test_simulated_backend_refuses_unconfigured_pins() -> None:
    with pytest.raises(GpioError, match="GPIO4 written before setup_output"):
        SimulatedGpio().write(4, True)
    with pytest.raises(GpioError, match="GPIO4 read before setup_output"):
        SimulatedGpio().read(4)


def test_fail_safe_restores_every_relay_even_if_one_fails() -> None:
    gpio = SimulatedGpio()
    a, b = Relay(gpio, 17), Relay(gpio, 27, "connected")
    a.connect()
    b.disconnect()

    class Broken(Relay):
        def to_safe_state(self) -> None:
            raise OSError("pin stuck")

    broken = Broken(gpio, 22)
    errors = FailSafe([broken, a, b]).restore()
    assert a.state == "disconnected" and b.state == "connected"
    assert errors == ["relay relay (GPIO22): cannot return to disconnected: pin stuck"]


CHILD = """
import os, signal, sys, time
from microgrid.coordinator.devices.gpio import FailSafe, Relay, SimulatedGpio
gpio = SimulatedGpio(journal=sys.argv[1])
relay = Relay(gpio, 17, "disconnected")
safe = FailSafe([relay])
safe.install()
relay.connect()
print("connected", flush=True)
if sys.argv[2] == "crash":
    raise RuntimeError("boom")
if sys.argv[2] == "wait":
    time.sleep(30)
"""


def _child(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "gpio.jsonl"), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_crash_returns_the_relay_to_its_safe_state(tmp_path: Path) -> None:
    proc = _child(tmp_path, "crash")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "boom" in err
    assert [t.level for t in read_journal(tmp_path / "gpio.jsonl")] == [False, True, False]


def test_sigterm_returns_the_relay_to_its_safe_state_and_exits(tmp_path: Path) -> None:
    proc = _child(tmp_path, "wait")
    assert proc.stdout is not None and proc.stdout.readline() == "connected\n"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert [t.level for t in read_journal(tmp_path / "gpio.jsonl")] == [False, True, False]


def test_a_restart_after_sigkill_begins_safe(tmp_path: Path) -> None:
    proc = _child(tmp_path, "wait")
    assert proc.stdout is not None and proc.stdout.readline() == "connected\n"
    proc.kill()
    proc.wait(timeout=30)
    assert [t.level for t in read_journal(tmp_path / "gpio.jsonl")] == [False, True]  # nothing ran
    # The next start drives the safe level first.
    gpio = SimulatedGpio()
    Relay(gpio, 17, "disconnected")
    assert gpio.history(17) == [False]


def test_status_led_blinks_from_ticks_without_reading_a_clock() -> None:
    gpio = SimulatedGpio()
    led = StatusLed(gpio, 22)
    assert gpio.levels[22] is False
    led.show(LedPattern.SLOW, now=0.0)
    lit = []
    for i in range(8):
        led.tick(i * 0.25)
        lit.append(led.lit)
    assert lit == [True, True, False, False, True, True, False, False]
    led.show("fast", now=0.0)
    led.tick(0.125)
    assert led.lit is False
    led.on()
    assert led.lit and gpio.levels[22] is True
    led.close()
    assert gpio.levels[22] is False


def test_auto_backend_off_a_pi_is_the_simulation() -> None:
    if os.path.exists("/proc/device-tree/model"):
        pytest.skip("running on a board with a device tree")
    assert open_backend("auto").name == "simulated"
    with pytest.raises(GpioError, match="backend 'spi': expected one of auto, rpi, simulated"):
        open_backend("spi")


def test_rpi_backend_off_a_pi_explains_rpi_lgpio() -> None:
    try:
        import RPi.GPIO  # type: ignore[import-not-found, import-untyped]  # noqa: F401
        pytest.skip("RPi.GPIO is installed")
    except (ImportError, RuntimeError):
        pass
    with pytest.raises(GpioError, match="rpi-lgpio on a Pi 5"):
        open_backend("rpi")


def test_pins_come_from_hardware() -> None:
    assert pin_for("relay_1") == 17 and pin_for("status_led") == 22


# -- [gpio] settings -----------------------------------------------------------


def test_settings_open_relays_safe_and_leds_on_hardware_pins() -> None:
    settings = GpioSettings(backend="simulated", relays={"relay_1": {}, "pump": {"pin": 24, "safe_state": "connected"}})
    devices = open_gpio(settings)
    gpio = devices.backend
    assert isinstance(gpio, SimulatedGpio)
    assert devices.relays["relay_1"].pin == 17 and devices.relays["relay_1"].state == "disconnected"
    assert devices.relays["pump"].state == "connected" and gpio.levels[24] is True
    assert devices.status_led is not None and devices.status_led.pin == 22
    devices.relays["relay_1"].connect()
    devices.relays["pump"].disconnect()
    devices.close()
    assert gpio.levels[17] is False and gpio.levels[24] is True


@pytest.mark.parametrize("settings, message", [
    (GpioSettings(backend="pigpio"), "gpio.backend='pigpio': expected one of auto, rpi, simulated"),
    (GpioSettings(relays={"pump": {}}), "gpio.relays.pump.pin: missing"),
    (GpioSettings(relays={"pump": {"pin": 40}}), r"gpio.relays.pump.pin=40: expected a BCM GPIO number in 2..27"),
    (GpioSettings(relays={"pump": {"pin": 22}}), "gpio.relays.pump=GPIO22: GPIO22 is already used by status_led"),
    (GpioSettings(relays={"a": {"pin": 24}, "b": {"pin": 24}}), "gpio.relays.b=GPIO24: GPIO24 is already used by gpio.relays.a"),
    (GpioSettings(relays={"pump": {"pin": 24, "safe_state": "off"}}), "safe_state='off': expected connected or disconnected"),
    (GpioSettings(relays={"pump": {"pin": 24, "invert": True}}), "gpio.relays.pump.invert: unknown setting"),
    (GpioSettings(relays={"bad name": {"pin": 24}}), "relay names use"),
])
def test_bad_gpio_settings_name_the_key(settings: GpioSettings, message: str) -> None:
    with pytest.raises(GpioSettingsError, match=message):
        settings.validate()
