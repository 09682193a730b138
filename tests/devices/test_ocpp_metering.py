"""From the plan to the charge point and back to settlement: the planner's
EV power reaches the `ocpp` library's own charge point as a charging
profile over a real websocket, and the charger's meter values are stored,
counted by settlement only where the charger has its own connection (a
charger behind the house meter is a sub-meter: the house meter already
counts the car)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call as c16

from microgrid.coordinator.devices.battery_settings import BatterySettings
from microgrid.coordinator.devices.charger_metering import CONNECTION, SUBMETER, ChargerMetering, charger_of
from microgrid.coordinator.devices.modbus_settings import ModbusSettings
from microgrid.coordinator.devices.ocpp_sessions import iso
from microgrid.coordinator.devices.ocpp_settings import OcppSettings, OcppSettingsError
from microgrid.coordinator.devices.service import DeviceService
from microgrid.coordinator.planner.model import EvNeed
from microgrid.coordinator.planner.service import PlannerService
from microgrid.coordinator.planner.wiring import FleetCharger
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.coordinator.trading.metering import interval_energy

from ..planner.test_openadr import scheduler
from ..planner.test_scheduler import MIDNIGHT
from .ocpp_client import PASSWORD, station

NOW = MIDNIGHT + 3600 + 120  # 01:02, cheap night: the plan charges the car
START, END = MIDNIGHT + 3600, MIDNIGHT + 3600 + 900  # the interval settled


class Clock:
    def now(self) -> float:
        return float(NOW)


def sample(wh: int, t: int) -> list[dict[str, Any]]:
    return [{"timestamp": iso(t), "sampled_value": [
        {"value": str(wh / 1000), "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
        {"value": "7.4", "measurand": "Power.Active.Import", "unit": "kW"}]}]


def test_plan_to_charging_profile_and_meter_values_to_settlement(tmp_path: Path) -> None:
    store = ReadingStore(open_database(tmp_path / "r.db"))
    ocpp = OcppSettings(enabled=True, port=0, password=PASSWORD, response_timeout_s=2.0,
                        chargers={"garage": {"max_power_w": 11000},  # behind the house meter (default)
                                  "carport": {"metering": CONNECTION}}).validate()
    metering = ChargerMetering(store, ocpp)
    # The house meter: 2000 Wh in the interval, the garage car's 1500 included.
    store.insert_measurement("modbus-house", "house", START - 5, 1000, 0, None, None, {}, "modbus:house")
    store.insert_measurement("modbus-house", "house", END - 5, 3000, 0, None, None, {}, "modbus:house")

    async def go() -> tuple[Any, Any]:
        devices = await DeviceService(BatterySettings(), ModbusSettings(), ocpp, clock=lambda: float(NOW),
                                      on_measurement=metering.record).start()
        try:
            assert devices.central is not None
            port = devices.central.port
            async with station(port, "garage", "1.6") as cp:
                await cp.call(c16.BootNotification(charge_point_model="Wallbox", charge_point_vendor="Acme"))
                start = await cp.call(c16.StartTransaction(connector_id=1, id_tag="CARD1", meter_start=5000,
                                                           timestamp=iso(START - 30)))
                # The plan's EV power for the slot about to start, sent as a charging profile.
                ev = EvNeed(energy_wh=20_000, deadline=MIDNIGHT + 6 * 3600, max_power_w=7400)
                service = PlannerService(scheduler(tmp_path), Clock(), charger=FleetCharger(devices.fleet),
                                         ev_need=lambda now: ev)
                decision = await service.step()
                assert service.errors == 0
                (profile,) = cp.profiles
                tid = start.transaction_id
                await cp.call(c16.MeterValues(connector_id=1, transaction_id=tid, meter_value=sample(5000, START - 10)))
                await cp.call(c16.MeterValues(connector_id=1, transaction_id=tid, meter_value=sample(6500, END - 10)))
            async with station(port, "carport", "1.6") as cp2:  # its own connection
                await cp2.call(c16.BootNotification(charge_point_model="Wallbox", charge_point_vendor="Acme"))
                await cp2.call(c16.MeterValues(connector_id=1, meter_value=sample(200, START - 10)))
                await cp2.call(c16.MeterValues(connector_id=1, meter_value=sample(1200, END - 10)))
                await cp2.call(c16.MeterValues(connector_id=1, meter_value=[{  # power only: not stored
                    "timestamp": iso(END - 8), "sampled_value": [
                        {"value": "3", "measurand": "Power.Active.Import", "unit": "kW"}]}]))
            return decision, profile
        finally:
            await devices.stop()

    decision, profile = asyncio.run(asyncio.wait_for(go(), 30))
    assert decision.ev_w is not None and decision.ev_w > 0
    [period] = profile["charging_schedule"]["charging_schedule_period"]
    assert float(period["limit"]) == pytest.approx(decision.ev_w, abs=1)
    assert profile["charging_profile_purpose"] == "TxDefaultProfile"

    # Stored: each EVSE its own device, the garage marked as a sub-meter.
    ids = [d.device_id for d in store.devices()]
    assert sorted(ids) == ["modbus-house", "ocpp-carport-evse1", "ocpp-garage-evse1"]
    garage = store.recent_readings("ocpp-garage-evse1", 5)
    assert [r["import_wh"] for r in garage] == [6500, 5000]
    assert garage[0]["source"] == "submeter:ocpp:garage" and '"submeter": 1.0' in garage[0]["extra"]
    assert len(store.recent_readings("ocpp-carport-evse1", 5)) == 2
    assert store.recent_readings("ocpp-carport-evse1", 1)[0]["source"] == "ocpp:carport"
    # Settlement: the house meter and the carport's own connection; the garage car once (in the house meter).
    assert metering.settled(ids) == ["modbus-house", "ocpp-carport-evse1"]
    assert interval_energy(store, metering.settled(ids), START, END).import_wh == 2000 + 1000
    assert interval_energy(store, ids, START, END).import_wh == 2000 + 1500 + 1000  # what counting all would do


def test_metering_setting_and_device_ids() -> None:
    with pytest.raises(OcppSettingsError, match="metering='both'"):
        OcppSettings(password=PASSWORD, chargers={"cp": {"metering": "both"}}).validate()
    with pytest.raises(OcppSettingsError, match="metering"):
        OcppSettings(password=PASSWORD, chargers={"cp": {"metering": 1}}).validate()
    s = OcppSettings(password=PASSWORD, chargers={"cp-1": {}, "own": {"metering": CONNECTION}}).validate()
    m = ChargerMetering(ReadingStore.__new__(ReadingStore), s)
    assert (m.kind("cp-1"), m.kind("own"), m.kind("gone")) == (SUBMETER, CONNECTION, SUBMETER)
    assert charger_of("ocpp-cp-1-evse2") == "cp-1" and charger_of("modbus-ocpp") is None
    assert charger_of("3f2a9c0d1e4b5a67") is None
    # A charger no longer configured counts as a sub-meter: never twice.
    assert m.settled(["ocpp-gone-evse1", "ocpp-own-evse1", "3f2a9c0d1e4b5a67"]) == ["ocpp-own-evse1",
                                                                                   "3f2a9c0d1e4b5a67"]


def test_the_coordinator_stores_charger_values_as_a_submeter_and_settles_without_them(tmp_path: Path) -> None:
    from microgrid.coordinator.app import Coordinator
    from microgrid.coordinator.config import Config

    from ..conftest import free_udp_port

    config = Config()
    config.coap.port = free_udp_port()
    config.store.path = str(tmp_path / "c.db")
    config.ocpp = OcppSettings(enabled=True, port=0, password=PASSWORD, chargers={"garage": {}})
    config.validate()

    async def run() -> None:
        c = Coordinator(config)
        await c.start()
        try:
            assert c.devices is not None and c.devices.central is not None
            c.store.insert_measurement("modbus-house", "house", START, 1000, 0, None, None, {}, "modbus:house")
            async with station(c.devices.central.port, "garage", "1.6") as cp:
                await cp.call(c16.BootNotification(charge_point_model="Wallbox", charge_point_vendor="Acme"))
                await cp.call(c16.MeterValues(connector_id=1, meter_value=sample(5000, START)))
            assert [r["import_wh"] for r in c.store.recent_readings("ocpp-garage-evse1", 5)] == [5000]
            assert sorted(d.device_id for d in c.store.devices()) == ["modbus-house", "ocpp-garage-evse1"]
            assert c.connection_device_ids() == ["modbus-house"]
        finally:
            await c.stop()

    asyncio.run(asyncio.wait_for(run(), 30))
