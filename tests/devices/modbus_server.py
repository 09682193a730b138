"""A real pymodbus server on 127.0.0.1 serving Eastron SDM120/SDM630 and
SunSpec (common, meter 201-204, inverter 101-103) register maps: the one
place the device tests get their Modbus devices from.

Register images are encoded here independently of the code under test
(floats by pymodbus's own converter, SunSpec by the model tables written
out below), so a decoder bug cannot cancel itself out.

Devices are pymodbus `SimDevice`s whose `action` copies each request's
registers from a Python-side bank, so a test can change what a device
serves while it runs (the 3.x datastore classes, ModbusDeviceContext and
friends, are deprecated wrappers that cannot change values under a running
server, and log a "removed in v4" warning, which is filtered here in case
pymodbus logs it from elsewhere). A device can also be made slow (answers
after the client's timeout) or answer with an exception code, and
`CorruptingProxy` flips bytes of RTU frames on the way back so the client
sees CRC errors.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass, field
from typing import Literal

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from microgrid.processes import free_tcp_port


class _DropV4Warnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "removed in v4" not in record.getMessage()


logging.getLogger("pymodbus.logging").addFilter(_DropV4Warnings())

Kind = Literal["input", "holding"]


def free_port() -> int:
    return free_tcp_port()


def float_regs(value: float) -> list[int]:
    regs = ModbusClientMixin.convert_to_registers(value, ModbusClientMixin.DATATYPE.FLOAT32)
    return [int(r) for r in regs]


@dataclass
class ServedDevice:
    """What one unit id serves. Addresses are 0-based PDU addresses."""

    unit: int
    input: dict[int, int] = field(default_factory=dict)
    holding: dict[int, int] = field(default_factory=dict)
    delay_s: float = 0.0  # answer this late (past the client's timeout: silence)
    exception: ExcCodes | None = None  # answer every request with this code
    requests: int = 0
    # Writes (0x06, 0x10) land in `holding` and are logged in `writes`.
    # `writable`: the only holding addresses a write may touch (else
    # ILLEGAL_ADDRESS, as a device answers a read-only point); None: all.
    # `ignore_writes`: acknowledge writes but keep the old values (a device
    # that silently drops a command).
    writable: set[int] | None = None
    ignore_writes: bool = False
    writes: list[tuple[int, list[int]]] = field(default_factory=list)

    def set_float(self, kind: Kind, address: int, value: float) -> None:
        bank = self.input if kind == "input" else self.holding
        hi, lo = float_regs(value)
        bank[address], bank[address + 1] = hi, lo

    def set_registers(self, kind: Kind, address: int, regs: list[int]) -> None:
        bank = self.input if kind == "input" else self.holding
        for i, r in enumerate(regs):
            bank[address + i] = r & 0xFFFF

    def _block(self, bank: dict[int, int]) -> list[SimData]:
        if not bank:
            return [SimData(0, values=[0], datatype=DataType.REGISTERS)]
        lo, hi = min(bank), max(bank)
        return [SimData(lo, values=[0] * (hi - lo + 1), datatype=DataType.REGISTERS)]

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        self.requests += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.exception is not None:
            return self.exception
        if set_values is not None and function_code in (6, 16):
            values = [int(v) for v in set_values]
            if self.writable is not None and any(address + i not in self.writable for i in range(len(values))):
                return ExcCodes.ILLEGAL_ADDRESS
            self.writes.append((address, values))
            if not self.ignore_writes:
                for i, v in enumerate(values):
                    self.holding[address + i] = v & 0xFFFF
        bank = self.input if function_code == 4 else self.holding
        for i in range(count):
            registers[address - start_address + i] = bank.get(address + i, 0)
        return None

    def sim_device(self) -> SimDevice:
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(self.unit, simdata=(bits, bits, self._block(self.holding), self._block(self.input)),
                         action=self._action)


# -- Eastron ------------------------------------------------------------------

SDM_ADDRESSES = {
    # our name -> input register address (Eastron manuals, 0-based)
    "voltage": 0x0000, "current": 0x0006, "power": 0x000C, "va": 0x0012, "var": 0x0018, "pf": 0x001E,
    "frequency": 0x0046, "import_kwh": 0x0048, "export_kwh": 0x004A,
}
SDM630_ADDRESSES = {
    "l1_voltage": 0x0000, "l2_voltage": 0x0002, "l3_voltage": 0x0004,
    "l1_current": 0x0006, "l2_current": 0x0008, "l3_current": 0x000A,
    "l1_power": 0x000C, "l2_power": 0x000E, "l3_power": 0x0010,
    "l1_pf": 0x001E, "l2_pf": 0x0020, "l3_pf": 0x0022,
    "voltage": 0x002A, "current": 0x0030, "power": 0x0034, "pf": 0x003E,
    "frequency": 0x0046, "import_kwh": 0x0048, "export_kwh": 0x004A,
}


def eastron_device(unit: int, model: str, **values: float) -> ServedDevice:
    """An SDM120 or SDM630 serving `values` (names of the tables above);
    every register of its map exists (zero unless set), as on the meter."""
    table = SDM_ADDRESSES if model == "sdm120" else SDM630_ADDRESSES
    dev = ServedDevice(unit)
    for addr in range(0, 0x50, 2):
        dev.set_float("input", addr, 0.0)
    dev.set_registers("holding", 0, [0] * 2)
    for name, value in values.items():
        dev.set_float("input", table[name], value)
    return dev


# -- SunSpec ------------------------------------------------------------------

NI16 = 0x8000  # int16 / sunssf not implemented
NU16 = 0xFFFF


def sunssf(value: int) -> int:
    return value & 0xFFFF


def text_regs(s: str, n: int) -> list[int]:
    raw = s.encode("ascii").ljust(2 * n, b"\x00")
    return [int(x) for x in struct.unpack(f">{n}H", raw)]


def common_model(manufacturer: str, model: str, serial: str) -> list[int]:
    """Model 1, 66 registers: Mn, Md, Opt, Vr, SN, DA, Pad."""
    return (text_regs(manufacturer, 16) + text_regs(model, 16) + text_regs("", 8) + text_regs("1.0", 8)
            + text_regs(serial, 16) + [1, 0x8000])


def meter_model(*, a: int = 0, a_sf: int = 0, phv: int = 0, ppv: int = NI16, v_sf: int = 0, hz: int = 0, hz_sf: int = 0,
                w: int = 0, w_phases: tuple[int, int, int] = (NI16, NI16, NI16), w_sf: int = 0, pf: int = NI16,
                pf_sf: int = 0, wh_exp: int = 0, wh_imp: int = 0, wh_sf: int = 0) -> list[int]:
    """A SunSpec meter model (201-204) data block, 105 registers, with the
    listed fields set and every other one "not implemented"."""
    r = [NI16] * 105
    r[0], r[4] = a & 0xFFFF, sunssf(a_sf)
    r[5], r[9], r[13] = phv & 0xFFFF, ppv & 0xFFFF, sunssf(v_sf)
    r[14], r[15] = hz & 0xFFFF, sunssf(hz_sf)
    r[16], r[20] = w & 0xFFFF, sunssf(w_sf)
    r[17], r[18], r[19] = (p & 0xFFFF for p in w_phases)
    r[31], r[35] = pf & 0xFFFF, sunssf(pf_sf)
    for i in range(36, 52):  # acc32 energies: 0 = not accumulated
        r[i] = 0
    r[36], r[37] = wh_exp >> 16, wh_exp & 0xFFFF
    r[44], r[45] = wh_imp >> 16, wh_imp & 0xFFFF
    r[52] = sunssf(wh_sf)
    for i in range(53, 69):
        r[i] = 0
    for i in range(70, 102):
        r[i] = 0
    r[103], r[104] = 0, 0  # Evt
    return r


def inverter_model(*, a: int = 0, a_sf: int = 0, phv_a: int = 0, v_sf: int = 0, w: int = 0, w_sf: int = 0,
                   hz: int = 0, hz_sf: int = 0, pf: int = NI16, pf_sf: int = 0, wh: int = 0, wh_sf: int = 0,
                   dcw: int = NI16, dcw_sf: int = 0, tmp_cab: int = NI16, tmp_sf: int = 0, state: int = 4) -> list[int]:
    """A SunSpec inverter model (101-103) data block, 50 registers."""
    r = [NI16] * 50
    r[0], r[4] = a & 0xFFFF, sunssf(a_sf)
    r[1] = r[2] = r[3] = NU16
    r[8], r[11] = phv_a & 0xFFFF, sunssf(v_sf)
    r[12], r[13] = w & 0xFFFF, sunssf(w_sf)
    r[14], r[15] = hz & 0xFFFF, sunssf(hz_sf)
    r[20], r[21] = pf & 0xFFFF, sunssf(pf_sf)
    r[22], r[23], r[24] = wh >> 16, wh & 0xFFFF, sunssf(wh_sf)
    r[29], r[30] = dcw & 0xFFFF, sunssf(dcw_sf)
    r[31], r[35] = tmp_cab & 0xFFFF, sunssf(tmp_sf)
    r[36], r[37] = state, NU16
    for i in range(38, 50):
        r[i] = 0
    return r


def sunspec_device(unit: int, models: list[tuple[int, list[int]]], base: int = 40000,
                   identity: tuple[str, str, str] = ("Example Energy", "EM-3", "SN0001")) -> ServedDevice:
    """"SunS", the common model, then `models` [(id, data)], then the end
    model, from `base`."""
    dev = ServedDevice(unit)
    regs = [0x5375, 0x6E53]
    chain = [(1, common_model(*identity))] + models
    for model_id, data in chain:
        regs += [model_id, len(data)] + data
    regs += [0xFFFF, 0]
    dev.set_registers("holding", base, regs)
    dev.set_registers("input", 0, [0])
    return dev


def sunspec_data_address(dev: ServedDevice, model_id: int, base: int = 40000) -> int:
    """Where the data of `model_id` starts in `dev` (to change it live)."""
    addr = base + 2
    while dev.holding[addr] != 0xFFFF:
        if dev.holding[addr] == model_id:
            return addr + 2
        addr += 2 + dev.holding[addr + 1]
    raise KeyError(model_id)


# -- the server ---------------------------------------------------------------


class ModbusTestServer:
    """A pymodbus TCP server on 127.0.0.1 serving `devices` (one per unit
    id), with Modbus-TCP framing or RTU frames over TCP ("rtu"), which
    exercises the RTU framer and its CRC as a serial line would."""

    def __init__(self, devices: list[ServedDevice], framer: Literal["socket", "rtu"] = "socket",
                 port: int | None = None) -> None:
        self.devices = devices
        self.framer = FramerType.SOCKET if framer == "socket" else FramerType.RTU
        self.port = port or free_port()
        self.server: ModbusTcpServer | None = None

    async def start(self) -> "ModbusTestServer":
        self.server = ModbusTcpServer([d.sim_device() for d in self.devices], address=("127.0.0.1", self.port),
                                      framer=self.framer)
        await self.server.serve_forever(background=True)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    async def __aenter__(self) -> "ModbusTestServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class CorruptingProxy:
    """A TCP relay on 127.0.0.1 that flips the last byte (the CRC) of the
    next `corrupt` responses going back to the client."""

    def __init__(self, target_port: int, corrupt: int = 0) -> None:
        self.target_port = target_port
        self.corrupt = corrupt
        self.corrupted = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> "CorruptingProxy":
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, back: bool) -> None:
            try:
                while data := await src.read(4096):
                    if back and self.corrupt > 0:
                        self.corrupt -= 1
                        self.corrupted += 1
                        data = data[:-1] + bytes([data[-1] ^ 0xFF])
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        for coro in (pipe(reader, up_writer, False), pipe(up_reader, writer, True)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
