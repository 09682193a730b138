"""Home batteries over SunSpec (models 124 and 802), against a real
pymodbus server on 127.0.0.1 whose registers pysunspec2 laid out
(sunspec_sim.py); what the driver wrote is decoded back by pysunspec2."""

from __future__ import annotations

import asyncio
import math
from typing import Any, Awaitable

import pytest

from microgrid.coordinator.devices.interface import (
    Battery,
    DeviceRejected,
    DeviceUnavailable,
    DeviceUnsupported,
    SetpointError,
)
from microgrid.coordinator.devices.modbus import ModbusLink
from microgrid.coordinator.devices.modbus_settings import ModbusBusSettings
from microgrid.coordinator.devices.sunspec_battery import SunSpecBattery

from .modbus_server import ModbusTestServer, ServedDevice
from .sunspec_sim import locate, model_from, set_points, sunspec2_device

T0 = 1_700_000_000.0

STORAGE = dict(WChaMax=5000, WChaMax_SF=0, StorCtl_Mod=0, MinRsvPct=1000, MinRsvPct_SF=-2, ChaState=5500,
               ChaState_SF=-2, ChaSt=4, OutWRte=10000, InWRte=10000, InOutWRte_SF=-2, InOutWRte_WinTms=0,
               InOutWRte_RvrtTms=0, InOutWRte_RmpTms=0)
BATTERY = dict(AHRtg=200, AHRtg_SF=0, WHRtg=1000, WHRtg_SF=1, WChaRteMax=500, WDisChaRteMax=400,
               WChaDisChaMax_SF=1, SoC=552, SoC_SF=-1, SoH=95, SoH_SF=0, State=3, LocRemCtl=0, Typ=4,
               AlmRst=0, Evt1=0, Evt2=0, EvtVnd1=0, EvtVnd2=0, V=4800, V_SF=-1, CellV_SF=-3, A=-312, A_SF=-1,
               AMax_SF=0, W=-1500, W_SF=0, SetOp=1, SetInvState=3)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


def battery(port: int, timeout_s: float = 0.5, **kw: Any) -> SunSpecBattery:
    link = ModbusLink(ModbusBusSettings("lan", "tcp", host="127.0.0.1", port=port), timeout_s)
    return SunSpecBattery("home", link, 1, clock=lambda: T0, **kw)


def device(storage: dict[str, int] | None = None, bat: dict[str, int] | None = None,
           extra: list[tuple[int, dict[str, int]]] | None = None) -> ServedDevice:
    models: list[tuple[int, dict[str, int]]] = [(124, {**STORAGE, **(storage or {})})]
    if bat is not None:
        models.append((802, {**BATTERY, **bat}))
    return sunspec2_device(1, models + (extra or []))


def test_state_reads_models_124_and_802_as_sunspec2_encodes_them() -> None:
    dev = device(bat={})

    async def go() -> None:
        async with ModbusTestServer([dev]) as srv:
            b = battery(srv.port)
            assert isinstance(b, Battery)
            st = await b.state()
            assert b.models is not None and b.models.device.manufacturer == "Example Storage"
            assert [m.model_id for m in b.models.device.models] == [1, 124, 802]
            assert st.soc_pct == pytest.approx(55.2)  # 802 SoC wins over 124 ChaState (55.0)
            assert st.power_w == 1500.0  # 802 W -1500: SunSpec's discharge-positive, so charging
            assert st.capacity_wh == 9500  # WHRtg 1000 x 10^1 Wh, times SoH 95 %
            assert st.max_charge_w == 5000.0  # least of WChaMax 5000 and WChaRteMax 500 x 10
            assert st.max_discharge_w == 4000.0  # WDisChaRteMax
            assert st.min_soc_pct == 10.0 and st.max_soc_pct == 100.0
            assert st.soh_pct == 95.0 and st.status == "ok" and st.setpoint_w is None and st.t == T0
            assert st.energy_wh == 5244
            b.link.close()

    run(go())


def test_commands_charge_discharge_idle_then_release() -> None:
    dev = device(bat={})

    async def go() -> None:
        async with ModbusTestServer([dev]) as srv:
            b = battery(srv.port, hold_s=900)
            assert await b.command(2500.0, until=T0 + 600) == 2500.0
            m = model_from(dev, 124)
            assert m.StorCtl_Mod.value == 3  # both limits active: a zero-width window
            assert (m.InWRte.value, m.OutWRte.value, m.InWRte.cvalue) == (5000, -5000, 50.0)
            assert m.InOutWRte_RvrtTms.value == 600  # reverts by itself at `until`
            assert (await b.state()).setpoint_w == 2500.0

            assert await b.command(-4000.0) == -4000.0
            m = model_from(dev, 124)
            assert (m.InWRte.value, m.OutWRte.value, m.InOutWRte_RvrtTms.value) == (-8000, 8000, 900)
            assert (await b.state()).setpoint_w == -4000.0

            # The register resolution (0.01 % of 5000 W = 0.5 W) rounds.
            assert await b.command(1234.6) == pytest.approx(1234.5)
            assert await b.command(0.0) == 0.0
            m = model_from(dev, 124)
            assert (m.InWRte.value, m.OutWRte.value, m.StorCtl_Mod.value) == (0, 0, 3)

            await b.release()
            assert model_from(dev, 124).StorCtl_Mod.value == 0
            assert (await b.state()).setpoint_w is None
            # Only model 124's RW points were written (the server refuses others).
            assert all(a >= 40000 for a, _ in dev.writes)
            b.link.close()

    run(go())


def test_setpoints_out_of_range_nan_or_expired_send_nothing() -> None:
    dev = device(bat={})

    async def go() -> None:
        async with ModbusTestServer([dev]) as srv:
            b = battery(srv.port)
            for bad, why in ((5001.0, "at most 5000 W of charge"), (-4001.0, "at most 4000 W of discharge"),
                             (math.nan, "expected a number")):
                with pytest.raises(SetpointError, match=why) as e:
                    await b.command(bad)
                assert e.value.device == "home"
            for bad_until in (T0 - 1, math.inf, math.nan):
                with pytest.raises(SetpointError, match="not after now"):
                    await b.command(100.0, until=bad_until)
            assert dev.writes == []
            # At the reserve (10 %) nothing may discharge; full, nothing may charge.
            set_points(dev, 802, SoC=100)
            st = await b.state()
            assert st.max_discharge_w == 0.0 and st.max_charge_w == 5000.0
            with pytest.raises(SetpointError, match="at most 0 W of discharge"):
                await b.command(-1.0)
            set_points(dev, 802, SoC=1000)
            assert (await b.state()).max_charge_w == 0.0
            # A fault: both limits 0, any command but idle refused.
            set_points(dev, 802, SoC=500, State=99)
            st = await b.state()
            assert (st.status, st.max_charge_w, st.max_discharge_w) == ("fault", 0.0, 0.0)
            with pytest.raises(SetpointError):
                await b.command(10.0)
            assert dev.writes == []
            b.link.close()

    run(go())


def test_not_implemented_values_fall_back_or_say_what_is_missing() -> None:
    # Model 124 alone, capacity from the configuration, power from the
    # inverter model (103): the fallbacks documented in the driver.
    inverter = dict(A=100, A_SF=-1, PhVphA=2300, V_SF=-1, W=2000, W_SF=0, Hz=5000, Hz_SF=-2, WH=1000, WH_SF=0,
                    St=4, DCA_SF=0, DCV_SF=0, DCW_SF=0, Tmp_SF=0, PF_SF=0, VA_SF=0, VAr_SF=0, AphA=100)
    dev = device(extra=[(103, inverter)])

    async def go() -> None:
        async with ModbusTestServer([dev]) as srv:
            b = battery(srv.port)
            with pytest.raises(DeviceUnsupported, match="capacity_wh"):
                await b.state()
            b = battery(srv.port, capacity_wh=8000)
            st = await b.state()
            assert (st.soc_pct, st.capacity_wh, st.power_w) == (55.0, 8000, -2000.0)
            assert st.max_discharge_w == 5000.0  # 124 WChaMax scales both rates
            # ChaState "not implemented" (0xFFFF) and no 802: no state of charge.
            set_points(dev, 124, ChaState=0xFFFF)
            with pytest.raises(DeviceUnsupported, match="no state of charge"):
                await b.state()
            # A scale factor "not implemented" (0x8000): rates cannot be written.
            set_points(dev, 124, ChaState=5500, InOutWRte_SF=-0x8000)
            with pytest.raises(DeviceUnsupported, match="InOutWRte_SF"):
                await b.command(100.0)
            assert dev.writes == []
            # A state of charge outside 0..100 is a register fault, not 250 %.
            set_points(dev, 124, ChaState=25000, InOutWRte_SF=-2)
            with pytest.raises(Exception, match="expected 0..100"):
                await b.state()
            b.link.close()

    run(go())


def test_the_700_series_storage_capacity_model_fills_in_for_802() -> None:
    inverter = dict(W=-3000, W_SF=0, A_SF=0, V_SF=0, Hz_SF=0, WH_SF=0, DCA_SF=0, DCV_SF=0, DCW_SF=0, Tmp_SF=0,
                    PF_SF=0, VA_SF=0, VAr_SF=0, St=4)
    dev = device(storage={"ChaState": 0xFFFF}, extra=[(713, dict(WHRtg=135, WHAvail=70, SoC=5120, SoH=9800, WH_SF=2,
                                                                  Pct_SF=-2)), (103, inverter)])

    async def go() -> None:
        async with ModbusTestServer([dev]) as srv:
            b = battery(srv.port)
            st = await b.state()
            assert (st.soc_pct, st.soh_pct, st.capacity_wh, st.power_w) == (51.2, 98.0, 13230, 3000.0)
            b.link.close()

    run(go())


def test_a_model_chain_that_moves_is_discovered_again() -> None:
    dev = device(bat={})
    moved = sunspec2_device(1, [(802, {**BATTERY, "SoC": 300}), (124, STORAGE)])  # same models, new order

    async def go() -> None:
        async with ModbusTestServer([dev]) as srv:
            b = battery(srv.port)
            assert (await b.state()).soc_pct == pytest.approx(55.2)
            dev.holding.clear()
            dev.holding.update(moved.holding)  # a firmware update put the battery model first
            dev.writable = moved.writable
            st = await b.state()
            assert st.soc_pct == 30.0 and b.models is not None
            assert b.models.battery is not None and b.models.battery.address < b.models.storage.address
            assert await b.command(1000.0) == 1000.0
            assert model_from(dev, 124).InWRte.value == 2000  # written where 124 now is
            b.link.close()

    run(go())


def test_missing_storage_model_or_no_sunspec_at_all() -> None:
    no_124 = sunspec2_device(1, [(802, BATTERY)])
    plain = ServedDevice(2)
    plain.set_registers("holding", 40000, [0x1234, 0x5678])

    runaway = ServedDevice(3)  # a model claiming more registers than the address space has
    runaway.set_registers("holding", 40000, [0x5375, 0x6E53, 124, 30000])

    async def go() -> None:
        async with ModbusTestServer([no_124, plain, runaway]) as srv:
            b = battery(srv.port)
            with pytest.raises(DeviceUnsupported, match=r"models 1, 802.*storage model 124"):
                await b.state()
            link = ModbusLink(ModbusBusSettings("lan", "tcp", host="127.0.0.1", port=srv.port), 0.5)
            with pytest.raises(DeviceUnsupported, match="no SunSpec marker"):
                await SunSpecBattery("other", link, 2, clock=lambda: T0).state()
            with pytest.raises(DeviceUnsupported, match="past the last register address"):
                await SunSpecBattery("runaway", link, 3, clock=lambda: T0).state()
            assert no_124.writes == [] and plain.writes == []
            b.link.close()
            link.close()

    run(go())


def test_silent_device_refused_or_ignored_write_clear_errors_nothing_lost() -> None:
    dev = device(bat={})

    async def go() -> None:
        async with ModbusTestServer([dev]) as srv:
            b = battery(srv.port, timeout_s=0.2)
            await b.command(1000.0, until=T0 + 300)
            before = dict(dev.holding)
            dev.delay_s = 1.0  # answers after the client gave up: silence
            with pytest.raises(DeviceUnavailable, match="no valid response within 0.2 s") as e:
                await b.command(2000.0)
            assert e.value.device == "home"
            with pytest.raises(DeviceUnavailable):
                await b.state()
            assert dev.holding == before  # nothing written while the device was silent
            dev.delay_s = 0.0
            st = await b.state()  # reconnects by itself
            assert st.setpoint_w == 1000.0  # the last accepted command is still in force

            # A device that acknowledges a write but keeps the old value.
            dev.ignore_writes = True
            with pytest.raises(DeviceRejected, match="did not keep the command"):
                await b.command(-2000.0)
            dev.ignore_writes = False
            assert (await b.state()).setpoint_w == 1000.0

            # A device that refuses the write (read-only register).
            writable = set(dev.writable or ())
            dev.writable = set()
            with pytest.raises(DeviceRejected, match="exception code 2.*nothing was changed"):
                await b.command(-2000.0)
            assert (await b.state()).setpoint_w == 1000.0

            # Rates taken, mode bits refused: the rates are put back, the
            # previous command stays whole.
            addr, _ = locate(dev, 124)
            dev.writable = writable - {addr + 5}  # StorCtl_Mod (ID + 5)
            with pytest.raises(DeviceRejected, match="restored"):
                await b.command(-2000.0)
            assert (await b.state()).setpoint_w == 1000.0
            assert model_from(dev, 124).InWRte.value == 2000
            b.link.close()

        # The server gone: a clear error, not a hang.
        with pytest.raises(DeviceUnavailable, match="cannot connect"):
            await b.state()

    run(go())


def test_local_control_is_refused() -> None:
    dev = device(bat={"LocRemCtl": 1})

    async def go() -> None:
        async with ModbusTestServer([dev]) as srv:
            b = battery(srv.port)
            assert (await b.state()).status == "local control"
            with pytest.raises(DeviceRejected, match="local control"):
                await b.command(100.0)
            assert dev.writes == []
            b.link.close()

    run(go())
