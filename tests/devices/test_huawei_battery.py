"""A battery behind a Huawei SUN2000 hybrid inverter, through the register
map documented in coordinator/devices/huawei_battery.py and
docs/DEVICES.md, against a pymodbus server on 127.0.0.1 serving that map
(addresses typed here from the vendor table, not imported)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable

import pytest

from microgrid.coordinator.devices.huawei_battery import HuaweiBattery
from microgrid.coordinator.devices.interface import (
    Battery,
    DeviceError,
    DeviceRejected,
    DeviceUnavailable,
    DeviceUnsupported,
    SetpointError,
)
from microgrid.coordinator.devices.modbus import ModbusLink
from microgrid.coordinator.devices.modbus_settings import ModbusBusSettings

from .modbus_server import ModbusTestServer, ServedDevice

T0 = 1_700_000_000.0
WRITABLE = set(range(47075, 47084)) | {47100} | set(range(47246, 47251))


def u32(v: int) -> list[int]:
    v &= 0xFFFFFFFF
    return [v >> 16, v & 0xFFFF]


def inverter(soc_tenths: int = 655, power_w: int = -1200, status: int = 2, capacity_wh: int = 10000) -> ServedDevice:
    dev = ServedDevice(1)
    dev.set_registers("holding", 37046, u32(5000) + u32(5000))  # max charge / discharge the battery allows
    dev.set_registers("holding", 37758, u32(capacity_wh) + [soc_tenths, 0, status, 5200, 0] + u32(power_w))
    dev.set_registers("holding", 47075, u32(4500) + u32(3000) + u32(0) + [1000, 150, 0])  # settings, cut-offs 100 / 15 %
    dev.set_registers("holding", 47100, [0])
    dev.set_registers("holding", 47246, [0] + u32(0) + u32(0))
    dev.writable = WRITABLE
    return dev


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


def battery(port: int, timeout_s: float = 0.5) -> HuaweiBattery:
    link = ModbusLink(ModbusBusSettings("lan", "tcp", host="127.0.0.1", port=port), timeout_s)
    return HuaweiBattery("luna", link, 1, clock=lambda: T0, hold_s=900)


def test_state_and_commands_through_the_documented_registers() -> None:
    dev = inverter()

    async def go() -> None:
        async with ModbusTestServer([dev]) as srv:
            b = battery(srv.port)
            assert isinstance(b, Battery)
            st = await b.state()
            assert (st.soc_pct, st.power_w, st.capacity_wh, st.status) == (65.5, -1200.0, 10000, "ok")
            assert (st.max_charge_w, st.max_discharge_w) == (4500.0, 3000.0)  # the settings are lower
            assert (st.min_soc_pct, st.max_soc_pct, st.setpoint_w) == (15.0, 100.0, None)

            assert await b.command(2500.4, until=T0 + 601) == 2500.0
            assert [dev.holding[a] for a in range(47246, 47251)] == [0] + u32(2500) + u32(0)
            assert (dev.holding[47083], dev.holding[47100]) == (11, 1)  # 601 s -> 11 whole minutes
            assert (await b.state()).setpoint_w == 2500.0

            assert await b.command(-3000.0) == -3000.0
            assert [dev.holding[a] for a in range(47246, 47251)] == [0] + u32(0) + u32(3000)
            assert (dev.holding[47083], dev.holding[47100]) == (15, 2)  # hold_s 900
            assert await b.command(0.0) == 0.0  # idle: a forcible charge at 0 W
            assert dev.holding[47100] == 1 and (await b.state()).setpoint_w == 0.0
            assert await b.command(100.0, until=T0 + 10 * 86400) == 100.0
            assert dev.holding[47083] == 1440  # the inverter's longest period
            await b.release()
            assert dev.holding[47100] == 0 and (await b.state()).setpoint_w is None
            b.link.close()

    run(go())


def test_limits_faults_and_bad_registers() -> None:
    dev = inverter(soc_tenths=150)

    async def go() -> None:
        async with ModbusTestServer([dev]) as srv:
            b = battery(srv.port)
            st = await b.state()
            assert st.max_discharge_w == 0.0 and st.max_charge_w == 4500.0  # at the 15 % cut-off
            with pytest.raises(SetpointError, match="at most 0 W of discharge"):
                await b.command(-100.0)
            with pytest.raises(SetpointError, match="at most 4500 W of charge"):
                await b.command(4501.0)
            dev.set_registers("holding", 37762, [3])  # fault
            st = await b.state()
            assert (st.status, st.max_charge_w, st.max_discharge_w) == ("fault", 0.0, 0.0)
            assert dev.writes == []
            dev.set_registers("holding", 37760, [1234])
            with pytest.raises(DeviceError, match="expected 0..1000"):
                await b.state()
            dev.set_registers("holding", 37758, u32(0))
            with pytest.raises(DeviceUnsupported, match="no battery connected"):
                await b.state()
            b.link.close()

    run(go())


def test_silent_or_refusing_inverter() -> None:
    dev = inverter()

    async def go() -> None:
        async with ModbusTestServer([dev]) as srv:
            b = battery(srv.port, timeout_s=0.2)
            await b.command(1000.0)
            dev.delay_s = 1.0
            with pytest.raises(DeviceUnavailable, match="no valid response"):
                await b.command(2000.0)
            dev.delay_s = 0.0
            assert (await b.state()).setpoint_w == 1000.0
            dev.writable = {47246, 47247, 47248, 47249, 47250}  # the period register refuses
            with pytest.raises(DeviceRejected, match="exception code 2.*registers 47246 restored"):
                await b.command(-2000.0)
            assert (await b.state()).setpoint_w == 1000.0  # the previous command, whole
            assert [dev.holding[a] for a in range(47246, 47251)] == [0] + u32(1000) + u32(0)
            dev.writable, dev.ignore_writes = WRITABLE, True
            with pytest.raises(DeviceRejected, match="did not keep the command"):
                await b.command(-2000.0)
            b.link.close()

    run(go())
