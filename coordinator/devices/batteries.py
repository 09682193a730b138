"""The configured batteries as `Battery` objects (interface.py), ready for
the planner: one ModbusLink per bus shared by the batteries on it (its
lock keeps requests on a bus one at a time), drivers by kind.

A bus shared with the meters' poller (modbus.py) gets a second client
here: fine for Modbus-TCP (devices take several connections), not for one
serial port; put batteries on a TCP bus or a gateway.
"""

from __future__ import annotations

from typing import Callable

from .battery_settings import BatterySettings, BatterySettingsError
from .huawei_battery import HuaweiBattery
from .interface import Battery
from .modbus import ModbusLink
from .modbus_settings import ModbusSettings
from .simulated import SimulatedBattery
from .sunspec_battery import SunSpecBattery


def make_batteries(settings: BatterySettings, modbus: ModbusSettings,
                   clock: Callable[[], float]) -> tuple[dict[str, Battery], list[ModbusLink]]:
    """(batteries by name, the links to close on shutdown). Call it in the
    running event loop: pymodbus makes its clients there."""
    buses = {b.name: b for b in modbus.bus_settings()}
    links: dict[str, ModbusLink] = {}
    out: dict[str, Battery] = {}
    for u in settings.unit_settings():
        if u.kind == "simulated":
            out[u.name] = SimulatedBattery(u.name, u.spec, clock)
            continue
        bus = buses.get(u.bus)
        if bus is None:
            raise BatterySettingsError(f"battery.units.{u.name}.bus={u.bus!r}: no such bus; expected one of "
                                       f"{', '.join(buses) or '(none: add a [modbus.buses.NAME] table)'}")
        link = links.get(u.bus) or links.setdefault(u.bus, ModbusLink(bus, settings.timeout_s))
        if u.kind == "huawei":
            out[u.name] = HuaweiBattery(u.name, link, u.unit, clock=clock, hold_s=settings.hold_s)
        else:
            out[u.name] = SunSpecBattery(u.name, link, u.unit, clock=clock, hold_s=settings.hold_s,
                                         base=u.sunspec_base, capacity_wh=u.capacity_wh, invert_power=u.invert_power)
    return out, list(links.values())
