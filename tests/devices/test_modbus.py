"""Wired meters and inverters over Modbus, against a real pymodbus server
on 127.0.0.1 serving Eastron and SunSpec register maps (modbus_server.py)."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any, Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.constants import ExcCodes

from microgrid.coordinator.devices import eastron, sunspec
from microgrid.coordinator.devices.modbus import ModbusPoller
from microgrid.coordinator.devices.modbus_settings import ModbusSettings, ModbusSettingsError
from microgrid.coordinator.devices.registers import DeviceMeasurement, RegisterMapError

from .modbus_server import (
    NI16,
    CorruptingProxy,
    ModbusTestServer,
    ServedDevice,
    eastron_device,
    float_regs,
    inverter_model,
    meter_model,
    sunspec_data_address,
    sunspec_device,
)

T0 = 1_700_000_000.0


def f32(x: float) -> float:
    """What a float32 register pair carries for `x`, as the decoder gives it."""
    return float(f"{struct.unpack('>f', struct.pack('>f', x))[0]:.7g}")


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


def poller(port: int, devices: dict[str, dict[str, Any]], kind: str = "tcp", timeout_s: float = 0.3,
           retries: int = 2, interval_s: float = 0.1, **kw: Any) -> tuple[ModbusPoller, list[DeviceMeasurement]]:
    got: list[DeviceMeasurement] = []
    s = ModbusSettings(enabled=True, interval_s=interval_s, timeout_s=timeout_s, retries=retries,
                       buses={"bus": {"kind": kind, "host": "127.0.0.1", "port": port}},
                       devices={name: {"bus": "bus", **d} for name, d in devices.items()}, **kw)
    return ModbusPoller(s, got.append, clock=lambda: T0), got


SDM630_VALUES = dict(voltage=231.4, current=13.37, power=-2981.5, pf=-0.97, frequency=49.98, import_kwh=12345.678,
                     export_kwh=4321.009, l1_voltage=230.1, l2_voltage=231.9, l3_voltage=232.2, l1_current=4.5,
                     l1_power=1000.25, l1_pf=0.99)


def test_sdm630_reads_the_exact_values_served() -> None:
    async def go() -> DeviceMeasurement | None:
        async with ModbusTestServer([eastron_device(1, "sdm630", **SDM630_VALUES)]) as srv:
            p, got = poller(srv.port, {"house": {"unit": 1, "model": "sdm630"}})
            m = await p.poll("house")
            p.close()
            assert got == [m]
            return m

    m = run(go())
    assert m is not None
    assert (m.device, m.source, m.model, m.t) == ("house", "modbus:house", "sdm630", T0)
    assert m.import_wh == 12345678 and m.export_wh == 4321009
    assert (m.power_w, m.voltage_v, m.current_a, m.frequency_hz, m.power_factor) == (
        f32(-2981.5), f32(231.4), f32(13.37), f32(49.98), f32(-0.97))
    assert m.extra["l2_voltage_v"] == f32(231.9) and m.extra["l1_power_w"] == f32(1000.25)
    assert m.extra["l1_power_factor"] == f32(0.99)


def test_sdm120_over_rtu_frames_with_crc() -> None:
    async def go() -> DeviceMeasurement | None:
        dev = eastron_device(7, "sdm120", voltage=229.9, current=0.52, power=101.5, pf=0.85, frequency=50.02,
                             import_kwh=0.123, export_kwh=0.0)
        async with ModbusTestServer([dev], framer="rtu") as srv:
            p, _ = poller(srv.port, {"flat": {"unit": 7, "model": "sdm120"}}, kind="rtu-over-tcp")
            m = await p.poll("flat")
            p.close()
            return m

    m = run(go())
    assert m is not None and m.model == "sdm120"
    assert (m.import_wh, m.export_wh, m.power_w, m.voltage_v) == (123, 0, f32(101.5), f32(229.9))


def test_several_units_share_one_bus() -> None:
    async def go() -> list[DeviceMeasurement | None]:
        devs = [eastron_device(u, "sdm120", import_kwh=float(u)) for u in (1, 2, 3)]
        async with ModbusTestServer(devs, framer="rtu") as srv:
            p, _ = poller(srv.port, {f"m{u}": {"unit": u, "model": "sdm120"} for u in (1, 2, 3)}, kind="rtu-over-tcp")
            out = list(await asyncio.gather(*(p.poll(f"m{u}") for u in (1, 2, 3))))
            p.close()
            return out

    assert [m.import_wh if m else None for m in run(go())] == [1000, 2000, 3000]


@pytest.mark.parametrize("model_id", [201, 202, 203, 204])
@pytest.mark.parametrize("base", [40000, 0, 50000])
def test_sunspec_meter_is_discovered_and_read_exactly(model_id: int, base: int) -> None:
    data = meter_model(a=1523, a_sf=-2, phv=2304 if model_id != 204 else NI16, ppv=4001, v_sf=-1, hz=4998, hz_sf=-2,
                       w=-3120, w_phases=(-1000, -1100, -1020), w_sf=0, pf=-95, pf_sf=0, wh_exp=987654, wh_imp=1234567,
                       wh_sf=1)

    async def go() -> tuple[DeviceMeasurement | None, Any]:
        dev = sunspec_device(1, [(model_id, data)], base=base)
        async with ModbusTestServer([dev]) as srv:
            p, _ = poller(srv.port, {"grid": {"unit": 1, "model": "sunspec-meter"}})
            m = await p.poll("grid")
            p.close()
            return m, p.devices["grid"].driver

    m, driver = run(go())
    assert m is not None and m.model == f"sunspec-{model_id}"
    assert m.import_wh == 12345670 and m.export_wh == 9876540  # scale factor 10^1
    assert m.power_w == -3120.0 and m.current_a == 15.23 and m.frequency_hz == 49.98 and m.power_factor == -0.95
    assert m.voltage_v == (400.1 if model_id == 204 else 230.4)  # delta: line-to-line
    if model_id != 201:
        assert m.extra == {"l1_power_w": -1000.0, "l2_power_w": -1100.0, "l3_power_w": -1020.0}
    assert driver.identity.manufacturer == "Example Energy" and driver.identity.serial == "SN0001"
    assert driver.identity.base == base


@pytest.mark.parametrize("model_id", [101, 102, 103])
def test_sunspec_inverter_output_is_export(model_id: int) -> None:
    data = inverter_model(a=2175, a_sf=-2, phv_a=2311, v_sf=-1, w=4950, w_sf=0, hz=5001, hz_sf=-2, pf=100, pf_sf=0,
                          wh=3456, wh_sf=3, dcw=5100, dcw_sf=0, tmp_cab=412, tmp_sf=-1, state=4)

    async def go() -> DeviceMeasurement | None:
        # A meter model first: the inverter driver must pick the inverter.
        dev = sunspec_device(3, [(203, meter_model()), (model_id, data)])
        async with ModbusTestServer([dev]) as srv:
            p, _ = poller(srv.port, {"pv": {"unit": 3, "model": "sunspec-inverter"}})
            m = await p.poll("pv")
            p.close()
            return m

    m = run(go())
    assert m is not None and m.model == f"sunspec-{model_id}"
    assert (m.import_wh, m.export_wh, m.power_w) == (None, 3456000, -4950.0)
    assert (m.voltage_v, m.current_a, m.frequency_hz, m.power_factor) == (231.1, 21.75, 50.01, 1.0)
    assert m.extra == {"dc_power_w": 5100.0, "cabinet_temperature_c": 41.2, "operating_state": 4.0}


def test_values_changing_on_the_device_are_followed() -> None:
    async def go() -> list[int | None]:
        dev = eastron_device(1, "sdm630", import_kwh=10.0)
        inv = sunspec_device(2, [(101, inverter_model(wh=100))])
        async with ModbusTestServer([dev, inv]) as srv:
            p, _ = poller(srv.port, {"m": {"unit": 1, "model": "sdm630"}, "pv": {"unit": 2, "model": "sunspec-inverter"}})
            out = []
            for kwh in (10.0, 10.5, 11.25):
                dev.set_float("input", 0x0048, kwh)
                m = await p.poll("m")
                out.append(m.import_wh if m else None)
            at = sunspec_data_address(inv, 101)
            inv.set_registers("holding", at + 22, [0, 250])
            m = await p.poll("pv")
            out.append(m.export_wh if m else None)
            p.close()
            return out

    assert run(go()) == [10000, 10500, 11250, 250]


# -- unhappy paths: retried, reported, never fatal -----------------------------


def test_a_silent_device_times_out_is_retried_and_reported() -> None:
    async def go() -> tuple[DeviceMeasurement | None, Any, float]:
        dev = eastron_device(1, "sdm120")
        dev.delay_s = 1.0
        async with ModbusTestServer([dev]) as srv:
            p, got = poller(srv.port, {"m": {"unit": 1, "model": "sdm120"}}, timeout_s=0.2, retries=2)
            t = time.monotonic()
            m = await p.poll("m")
            took = time.monotonic() - t
            p.close()
            return m, p.status()["m"], took

    m, st, took = run(go())
    assert m is None and not st.ok
    assert st.last_error_kind == "timeout" and st.retries == 2 and st.failures == 1
    assert "unit 1 input registers 0..31: no valid response within 0.2 s" in st.last_error
    assert took < 3.0


def test_a_corrupted_frame_is_a_crc_error_retried_to_success() -> None:
    async def go() -> tuple[DeviceMeasurement | None, Any, int]:
        dev = eastron_device(1, "sdm630", import_kwh=42.0)
        async with ModbusTestServer([dev], framer="rtu") as srv:
            proxy = await CorruptingProxy(srv.port, corrupt=1).start()
            p, _ = poller(proxy.port, {"m": {"unit": 1, "model": "sdm630"}}, kind="rtu-over-tcp", timeout_s=0.3)
            m = await p.poll("m")
            p.close()
            await proxy.stop()
            return m, p.status()["m"], proxy.corrupted

    m, st, corrupted = run(go())
    assert corrupted == 1
    assert m is not None and m.import_wh == 42000
    assert st.ok and st.retries == 1 and st.failures == 0


def test_an_exception_response_is_reported_with_its_code() -> None:
    async def go() -> Any:
        dev = eastron_device(1, "sdm120")
        dev.exception = ExcCodes.ILLEGAL_ADDRESS
        async with ModbusTestServer([dev]) as srv:
            p, _ = poller(srv.port, {"m": {"unit": 1, "model": "sdm120"}})
            assert await p.poll("m") is None
            p.close()
            return p.status()["m"], dev.requests

    st, requests = run(go())
    assert st.last_error_kind == "exception" and "Modbus exception code 2" in st.last_error
    assert requests == 1 and st.retries == 0  # an illegal address is not retried


def test_a_busy_device_is_retried() -> None:
    async def go() -> Any:
        dev = eastron_device(1, "sdm120")
        dev.exception = ExcCodes.DEVICE_BUSY
        async with ModbusTestServer([dev]) as srv:
            p, _ = poller(srv.port, {"m": {"unit": 1, "model": "sdm120"}}, retries=3)
            assert await p.poll("m") is None
            p.close()
            return p.status()["m"]

    assert run(go()).retries == 3


def test_no_server_at_all_is_reported_not_raised() -> None:
    from .modbus_server import free_port

    async def go() -> Any:
        p, _ = poller(free_port(), {"m": {"unit": 1, "model": "sdm630"}, "pv": {"unit": 2, "model": "sunspec-inverter"}})
        assert await p.poll("m") is None and await p.poll("pv") is None
        p.close()
        return p.status()

    st = run(go())
    assert st["m"].last_error_kind == "connection" and "cannot connect" in st["m"].last_error
    assert st["pv"].last_error_kind == "connection"


def test_sunspec_without_the_wanted_model_or_marker_says_what_it_found() -> None:
    async def go() -> dict[str, Any]:
        meter_only = sunspec_device(1, [(203, meter_model())])
        no_marker = eastron_device(2, "sdm120")
        async with ModbusTestServer([meter_only, no_marker]) as srv:
            p, _ = poller(srv.port, {"pv": {"unit": 1, "model": "sunspec-inverter"},
                                     "x": {"unit": 2, "model": "sunspec-meter", "sunspec_base": 0}})
            await p.poll("pv")
            await p.poll("x")
            p.close()
            return p.status()

    st = run(go())
    assert "has models 1, 203; expected one of 101, 102, 103" in st["pv"].last_error
    assert "no SunSpec marker 'SunS'" in st["x"].last_error


def test_the_poller_survives_the_server_vanishing_and_returning() -> None:
    """The bar: exact values, the server gone for a while, then back."""

    async def go() -> tuple[list[DeviceMeasurement], list[Any], Any]:
        dev = eastron_device(1, "sdm630", **SDM630_VALUES)
        inv = sunspec_device(2, [(103, inverter_model(w=1200, wh=5000))])
        srv = await ModbusTestServer([dev, inv]).start()
        statuses: list[Any] = []
        got: list[DeviceMeasurement] = []
        s = ModbusSettings(enabled=True, interval_s=0.05, timeout_s=0.2, retries=1, backoff_max_s=0.2,
                           buses={"bus": {"kind": "tcp", "host": "127.0.0.1", "port": srv.port}},
                           devices={"m": {"bus": "bus", "unit": 1, "model": "sdm630"},
                                    "pv": {"bus": "bus", "unit": 2, "model": "sunspec-inverter"}})
        p = ModbusPoller(s, got.append, on_status=statuses.append, clock=lambda: T0)
        task = asyncio.create_task(p.run())
        await _until(lambda: len(got) >= 4)
        await srv.stop()
        await _until(lambda: all(not x.ok for x in p.status().values()) and p.status()["m"].failures >= 2)
        before = len(got)
        dev.set_float("input", 0x0048, 12346.0)  # energy moved on while we could not see it
        await srv.start()
        await _until(lambda: len(got) >= before + 4 and all(x.ok for x in p.status().values()))
        p.stop()
        await task
        p.close()
        await srv.stop()
        return got, statuses, p.status()

    got, statuses, final = run(go())
    assert not any(g is None for g in got)
    assert got[0].import_wh == 12345678 and got[0].power_w == f32(-2981.5)
    assert got[-1].import_wh == 12346000 or any(g.import_wh == 12346000 for g in got)
    assert [s.ok for s in statuses if s.name == "m"][:2] == [True, False] and statuses[-1].ok
    assert final["m"].last_error_kind == "connection" and final["m"].consecutive_failures == 0


def test_a_failing_device_backs_off_and_does_not_starve_the_others() -> None:
    async def go() -> tuple[int, int]:
        ok = eastron_device(1, "sdm120", import_kwh=1.0)
        silent = eastron_device(2, "sdm120")
        silent.delay_s = 1.0
        async with ModbusTestServer([ok, silent]) as srv:
            p, got = poller(srv.port, {"ok": {"unit": 1, "model": "sdm120"}, "bad": {"unit": 2, "model": "sdm120"}},
                            timeout_s=0.1, retries=0, interval_s=0.05, backoff_max_s=2.0)
            task = asyncio.create_task(p.run())
            await asyncio.sleep(1.5)
            p.stop()
            await task
            p.close()
            return len(got), p.status()["bad"].polls

    good, bad_polls = run(go())
    assert good >= 5
    assert bad_polls <= 5  # 0.1 s timeouts backing off 0.05, 0.1, 0.2, 0.4, 0.8 ...


def test_a_failing_callback_does_not_stop_polling() -> None:
    async def go() -> int:
        async with ModbusTestServer([eastron_device(1, "sdm120")]) as srv:
            calls = []

            def boom(m: DeviceMeasurement) -> None:
                calls.append(m)
                raise RuntimeError("store is full")

            s = ModbusSettings(buses={"b": {"kind": "tcp", "host": "127.0.0.1", "port": srv.port}},
                               devices={"m": {"bus": "b", "model": "sdm120"}})
            p = ModbusPoller(s, boom)
            assert await p.poll("m") is not None
            assert await p.poll("m") is not None
            p.close()
            return len(calls)

    assert run(go()) == 2


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# -- decoders (pure) ------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 9_999_999, allow_nan=False), st.floats(-1e5, 1e5, allow_nan=False, width=32))
def test_eastron_decoding_round_trips_float32(import_kwh: float, power: float) -> None:
    regs = []
    for addr in range(0, 0x50, 2):
        regs += [0, 0]
    regs[0x48:0x4A] = float_regs(import_kwh)
    regs[0x34:0x36] = float_regs(power)
    m = eastron.decode(eastron.SDM630, {0: regs}, "x", 0.0)
    kwh32 = struct.unpack(">f", struct.pack(">f", import_kwh))[0]
    assert m.import_wh == int(kwh32 * 1000 + 0.5)
    assert m.power_w == pytest.approx(power, rel=1e-6, abs=1e-30)


def test_eastron_nan_energy_is_an_error_naming_the_register() -> None:
    regs = [0] * 0x50
    regs[0x48:0x4A] = float_regs(float("nan"))
    with pytest.raises(RegisterMapError, match=r"sdm630 import energy \(0x0048\) register holds nan kWh"):
        eastron.decode(eastron.SDM630, {0: regs}, "x", 0.0)
    with pytest.raises(RegisterMapError, match="block at 0 was not read in full"):
        eastron.decode(eastron.SDM630, {0: regs[:10]}, "x", 0.0)


def test_sunspec_not_implemented_values_are_none() -> None:
    m = sunspec.decode_meter(203, meter_model(w=NI16, hz=NI16, wh_imp=0, wh_exp=0), "x", 0.0)
    assert (m.power_w, m.frequency_hz, m.import_wh, m.export_wh, m.power_factor) == (None, None, None, None, None)
    with pytest.raises(RegisterMapError, match="SunSpec meter model 203: 50 registers; expected 105"):
        sunspec.decode_meter(203, [0] * 50, "x", 0.0)
    with pytest.raises(RegisterMapError, match="expected an inverter model"):
        sunspec.decode_inverter(203, [0] * 50, "x", 0.0)


# -- [modbus] settings ------------------------------------------------------------


@pytest.mark.parametrize("kw, message", [
    (dict(timeout_s=0), "modbus.timeout_s=0: expected a number in 0.01..60"),
    (dict(retries=11), "modbus.retries=11: expected an integer in 0..10"),
    (dict(buses={"b": {"kind": "udp"}}), "modbus.buses.b.kind='udp': expected one of rtu, tcp, rtu-over-tcp"),
    (dict(buses={"b": {"kind": "rtu"}}), "modbus.buses.b.device: missing; expected a serial port"),
    (dict(buses={"b": {"kind": "rtu", "device": "/dev/ttyUSB0", "baudrate": 1000}}), "baudrate=1000"),
    (dict(buses={"b": {"kind": "rtu", "device": "/dev/ttyUSB0", "parity": "X"}}), "parity='X': expected N, E or O"),
    (dict(buses={"b": {"kind": "tcp"}}), "modbus.buses.b.host: missing"),
    (dict(buses={"b": {"kind": "tcp", "host": "h", "port": "502"}}), r"modbus.buses.b.port='502': expected int"),
    (dict(buses={"b": {"kind": "tcp", "host": "h", "speed": 1}}), "modbus.buses.b.speed: unknown setting"),
    (dict(devices={"m": {"bus": "nope", "model": "sdm120"}}), "modbus.devices.m.bus='nope': no such bus"),
    (dict(devices={"m": {"bus": "b", "model": "kamstrup"}}), "modbus.devices.m.model='kamstrup': expected one of"),
    (dict(devices={"m": {"model": "sdm120"}}), "modbus.devices.m.bus: missing"),
    (dict(buses={"b": {"kind": "tcp", "host": "h"}}, devices={"m": {"bus": "b", "model": "sdm120", "unit": 0}}),
     "modbus.devices.m.unit=0: expected a Modbus unit id in 1..247"),
    (dict(devices={"my meter": {"bus": "b", "model": "sdm120"}}), "names use 1-64 of"),
])
def test_bad_modbus_settings_name_the_key(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ModbusSettingsError, match=message):
        ModbusSettings(**kw).validate()


def test_device_interval_defaults_to_the_section_interval() -> None:
    s = ModbusSettings(interval_s=30, buses={"b": {"kind": "tcp", "host": "h"}},
                       devices={"a": {"bus": "b", "model": "sdm120"}, "c": {"bus": "b", "model": "sdm630", "interval_s": 5}})
    assert [d.interval_s for d in s.validate().device_settings()] == [30.0, 5.0]


def test_a_serial_port_without_rs485_support_is_reported_not_raised() -> None:
    """The RTU serial client on a real pseudo-terminal: it opens, but a
    pty has no RS-485 mode, which the poller reports with the fix."""
    import os

    master, slave = os.openpty()
    path = os.ttyname(slave)

    async def go() -> Any:
        s = ModbusSettings(timeout_s=0.2, retries=0,
                           buses={"rs485": {"kind": "rtu", "device": path, "baudrate": 9600, "rs485": True}},
                           devices={"m": {"bus": "rs485", "model": "sdm120"}})
        p = ModbusPoller(s, lambda m: None)
        assert await p.poll("m") is None
        p.close()
        return p.status()["m"]

    try:
        st = run(go())
    finally:
        os.close(master)
        os.close(slave)
    assert st.last_error_kind == "connection"
    assert f"cannot switch {path} to RS-485 mode" in st.last_error and "rs485 = false" in st.last_error


def test_a_silent_serial_line_times_out() -> None:
    """The same pty without RS-485 mode: the request goes out as an RTU
    frame with CRC and nobody answers."""
    import os

    master, slave = os.openpty()
    path = os.ttyname(slave)

    async def go() -> Any:
        s = ModbusSettings(timeout_s=0.2, retries=1, buses={"line": {"kind": "rtu", "device": path}},
                           devices={"m": {"bus": "line", "model": "sdm120", "unit": 5}})
        p = ModbusPoller(s, lambda m: None)
        assert await p.poll("m") is None
        p.close()
        return p.status()["m"]

    try:
        st = run(go())
        sent = os.read(master, 64)
    finally:
        os.close(master)
        os.close(slave)
    assert st.last_error_kind == "timeout" and st.retries == 1
    # unit 5, function 0x04, address 0x0000, count 0x0020, then the CRC
    assert sent[:6] == bytes([5, 4, 0, 0, 0, 0x20]) and len(sent) >= 8


def test_rs485_mode_is_only_for_serial_buses() -> None:
    with pytest.raises(ModbusSettingsError, match='modbus.buses.b.rs485: only a serial bus'):
        ModbusSettings(buses={"b": {"kind": "tcp", "host": "h", "rs485": True}}).validate()
    with pytest.raises(ModbusSettingsError, match="modbus.buses.b.rs485='yes': expected bool"):
        ModbusSettings(buses={"b": {"kind": "rtu", "device": "/dev/ttyUSB0", "rs485": "yes"}}).validate()
