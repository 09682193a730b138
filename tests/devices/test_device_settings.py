"""[battery] and [ocpp] in the coordinator's configuration: defaults,
errors that name the key, and the objects built from them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from microgrid.coordinator.config import ConfigError, from_dict
from microgrid.coordinator.devices.batteries import make_batteries
from microgrid.coordinator.devices.huawei_battery import HuaweiBattery
from microgrid.coordinator.devices.ocpp_central import OcppCentral
from microgrid.coordinator.devices.ocpp_settings import OcppSettingsError
from microgrid.coordinator.devices.simulated import SimulatedBattery
from microgrid.coordinator.devices.sunspec_battery import SunSpecBattery

BUSES = {"buses": {"lan": {"kind": "tcp", "host": "127.0.0.1", "port": 1502}}}


def test_defaults_are_off_and_valid() -> None:
    c = from_dict({})
    assert c.battery.unit_settings() == [] and c.battery.hold_s == 900.0
    assert not c.ocpp.enabled and c.ocpp.versions == ["2.0.1", "1.6"] and c.ocpp.port == 8887


def test_batteries_of_each_kind_from_the_config() -> None:
    c = from_dict({"modbus": BUSES, "battery": {"hold_s": 600, "units": {
        "home": {"kind": "sunspec", "bus": "lan", "unit": 3, "capacity_wh": 9000},
        "luna": {"kind": "huawei", "bus": "lan"},
        "demo": {"kind": "simulated", "capacity_wh": 5000, "max_charge_w": 2500, "standby_w": 0}}}})

    async def build() -> Any:  # pymodbus clients are made inside the running loop
        return make_batteries(c.battery, c.modbus, clock=lambda: 0.0)

    batteries, links = asyncio.run(build())
    home, luna, demo = batteries["home"], batteries["luna"], batteries["demo"]
    assert isinstance(home, SunSpecBattery) and (home.unit, home.capacity_wh, home.hold_s) == (3, 9000, 600)
    assert isinstance(luna, HuaweiBattery) and luna.link is home.link and len(links) == 1  # one client per bus
    assert isinstance(demo, SimulatedBattery) and demo.spec.max_charge_w == 2500.0 and demo.spec.hold_s == 600


@pytest.mark.parametrize("raw, message", [
    ({"battery": {"units": {"b": {"kind": "sunspec", "bus": "nowhere"}}}}, "battery.units.b.bus='nowhere': expected a bus"),
    ({"battery": {"units": {"b": {"kind": "tesla"}}}}, "battery.units.b.kind='tesla'"),
    ({"battery": {"units": {"b": {"kind": "sunspec"}}}}, "battery.units.b.bus: missing"),
    ({"battery": {"units": {"b": {"kind": "simulated", "bus": "lan"}}}}, "battery.units.b.bus: unknown setting"),
    ({"battery": {"units": {"b": {"kind": "simulated", "charge_efficiency": 2}}}}, "charge_efficiency=2.0"),
    ({"battery": {"units": {"b": {"kind": "huawei", "bus": "lan", "unit": "1"}}}}, "battery.units.b.unit='1'"),
    ({"battery": {"units": {"b c": {"kind": "simulated"}}}}, "names use"),
    ({"battery": {"hold_s": 1}}, "battery.hold_s=1"),
    ({"battery": {"colour": "red"}}, "battery.colour: unknown setting"),
    ({"ocpp": {"enabled": True, "password": "0123456789abcdef"}}, "ocpp.chargers: none listed"),
    ({"ocpp": {"port": 70000}}, "ocpp.port=70000"),
    ({"ocpp": {"chargers": {"cp": {}}}}, "ocpp.password_file: missing"),
])
def test_bad_settings_name_the_key(raw: dict[str, Any], message: str) -> None:
    raw = {"modbus": BUSES, **raw}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(raw)


def test_ocpp_password_from_an_owner_only_file(tmp_path: Path) -> None:
    pw = tmp_path / "ocpp.password"
    pw.write_text("0123456789abcdef-secret\n")
    os.chmod(pw, 0o600)
    c = from_dict({"ocpp": {"enabled": True, "password_file": "ocpp.password", "chargers": {"cp": {}}}})
    cs = OcppCentral(c.ocpp, clock=lambda: 0.0, secrets_dir=tmp_path)
    assert cs._passwords["cp"] == b"0123456789abcdef-secret"
    os.chmod(pw, 0o644)
    with pytest.raises(OcppSettingsError, match="readable by others") as e:
        OcppCentral(c.ocpp, clock=lambda: 0.0, secrets_dir=tmp_path)
    assert "secret" not in str(e.value).replace("ocpp.password", "")
    pw.write_text("short\n")
    os.chmod(pw, 0o600)
    with pytest.raises(OcppSettingsError, match="5 characters; expected 16 to 40"):
        OcppCentral(c.ocpp, clock=lambda: 0.0, secrets_dir=tmp_path)
    pw.unlink()
    with pytest.raises(OcppSettingsError, match="cannot read it"):
        OcppCentral(c.ocpp, clock=lambda: 0.0, secrets_dir=tmp_path)


def test_device_service_from_the_config_stores_charger_samples_as_measurements() -> None:
    from ocpp.v16 import call as c16

    from microgrid.coordinator.devices.ocpp_sessions import iso
    from microgrid.coordinator.devices.registers import DeviceMeasurement
    from microgrid.coordinator.devices.service import DeviceService

    from .ocpp_client import PASSWORD, station

    c = from_dict({"battery": {"units": {"demo": {"kind": "simulated"}}},
                   "ocpp": {"enabled": True, "port": 0, "password": PASSWORD, "chargers": {"garage": {}}}})
    stored: list[DeviceMeasurement] = []

    async def go() -> None:
        svc = await DeviceService(c.battery, c.modbus, c.ocpp, clock=lambda: 1_750_000_000.0,
                                  on_measurement=stored.append).start()
        try:
            assert (await svc.batteries["demo"].state()).soc_pct == 50.0
            assert svc.fleet is not None and svc.central is not None
            async with station(svc.central.port, "garage") as cp:
                await cp.call(c16.MeterValues(connector_id=1, meter_value=[
                    {"timestamp": iso(1_750_000_060), "sampled_value": [{"value": "12345", "unit": "Wh"}]}]))
        finally:
            await svc.stop()
        assert [(m.source, m.model, m.import_wh, m.t) for m in stored] == [
            ("ocpp:garage", "ocpp-1.6", 12345, 1_750_000_060.0)]

    asyncio.run(go())


def test_the_console_shows_ocpp_passwords_only_as_set() -> None:
    from types import SimpleNamespace

    from microgrid.coordinator.console import Console

    cfg = from_dict({"ocpp": {"password": "SHARED-secret-0123456", "chargers": {"g": {"password": "OWN-secret-0123456789"}}}})
    shown = Console(SimpleNamespace(config=cfg, store=None)).handle("config")
    assert "[ocpp]" in shown and 'password = "(set)"' in shown
    assert "SHARED-secret" not in shown and "OWN-secret" not in shown
    assert "secret" not in repr(cfg.ocpp) and "secret" not in repr(cfg.ocpp.charger_settings()[0])
