"""Wired meters and inverters over Modbus (pymodbus 3, RTU and TCP),
polled on a schedule.

- `ModbusLink`: one bus (a serial port, a TCP device or an RTU-over-TCP
  gateway) with one pymodbus client; requests on a bus go one at a time.
  Every failure becomes a `ModbusReadError` naming the bus, the unit and
  the registers.
- Drivers turn a device's registers into a `DeviceMeasurement`: Eastron
  SDM120/SDM630 (eastron.py) and SunSpec meters and inverters (sunspec.py,
  with model discovery).
- `ModbusPoller` polls every configured device at its interval and hands
  each measurement to a callback (the app stores it with its source,
  "modbus:<name>"). A timeout, a corrupted frame (CRC), an exception
  response or a vanished device is retried, counted, logged once and
  reported through `status()`; it never stops the poller or the app. A
  device that keeps failing is polled with exponential backoff (up to
  `backoff_max_s`) so it cannot hog a shared RS-485 bus with timeouts.

Times for the schedule come from the event loop; the timestamps on
measurements from the `clock` passed in (the demo's simulated clock).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Mapping, Protocol, Sequence

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from . import eastron, sunspec
from .modbus_settings import ModbusBusSettings, ModbusDeviceSettings, ModbusSettings
from .registers import DeviceMeasurement, ModbusReadError, ReadBlock, RegisterKind, RegisterMapError

log = logging.getLogger("microgrid.devices.modbus")

# We log each failure once, with its cause; pymodbus would also log every
# failed request with a dump of the last frames. Quiet it unless someone
# has set its level on purpose.
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class ModbusLink:
    """One bus and its pymodbus client. pymodbus's own retries and
    reconnects are off: the poller decides when to retry and reconnect."""

    def __init__(self, bus: ModbusBusSettings, timeout_s: float) -> None:
        self.bus = bus
        self.timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self.client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if bus.kind == "rtu":
            self.client = AsyncModbusSerialClient(
                bus.device, framer=FramerType.RTU, baudrate=bus.baudrate, bytesize=bus.bytesize, parity=bus.parity,
                stopbits=bus.stopbits, timeout=timeout_s, retries=0, reconnect_delay=0, name=bus.name)
        else:
            framer = FramerType.SOCKET if bus.kind == "tcp" else FramerType.RTU
            self.client = AsyncModbusTcpClient(bus.host, port=bus.port, framer=framer, timeout=timeout_s, retries=0,
                                               reconnect_delay=0, name=bus.name)

    def _what(self, kind: RegisterKind, address: int, count: int, unit: int) -> str:
        return f"bus {self.bus.name} ({self.bus.describe()}) unit {unit} {kind} registers {address}..{address + count - 1}"

    async def _connect(self, what: str) -> None:
        """Connect if not connected; the caller holds the lock."""
        if self.client.connected:
            return
        try:
            ok = await asyncio.wait_for(self.client.connect(), self.timeout_s * 2 + 1)
        except (asyncio.TimeoutError, OSError, ModbusException) as e:
            ok, why = False, str(e) or type(e).__name__
        else:
            why = "connection refused or port unavailable"
        if not ok:
            self.client.close()
            raise ModbusReadError("connection", what, f"cannot connect: {why}")
        if self.bus.rs485:
            self._enable_rs485(what)

    async def _request(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """One request on the bus, under its lock: connect if needed, send,
        and turn every failure into a ModbusReadError (the kinds `read`
        documents). After a failure the connection is dropped so a late
        reply cannot be taken for the next request's."""
        async with self._lock:
            await self._connect(what)
            try:
                rr = await call()
            except ModbusIOException as e:
                self.client.close()
                raise ModbusReadError("timeout", what, f"no valid response within {self.timeout_s} s "
                                      f"(device silent, wrong unit id or corrupted frame): {e}") from None
            except (ConnectionException, OSError) as e:
                self.client.close()
                raise ModbusReadError("connection", what, f"connection lost: {e}") from None
            except ModbusException as e:
                self.client.close()
                raise ModbusReadError("timeout", what, f"bad response: {e}") from None
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            raise ModbusReadError("exception", what, f"device answered with Modbus exception code {code}", code)
        return rr

    async def read(self, kind: RegisterKind, address: int, count: int, unit: int) -> list[int]:
        what = self._what(kind, address, count, unit)
        name = "read_input_registers" if kind == "input" else "read_holding_registers"
        rr = await self._request(what, lambda: getattr(self.client, name)(address, count=count, device_id=unit))
        regs = list(rr.registers)
        if len(regs) < count:
            raise ModbusReadError("short", what, f"{len(regs)} registers in the answer; expected {count}")
        return regs

    async def write(self, address: int, values: Sequence[int], unit: int) -> None:
        """Write holding registers (function 0x10, one request). Failures
        raise ModbusReadError with the same kinds as `read` ("exception":
        the device refused, e.g. a read-only or absent register). After a
        timeout the write may or may not have happened: callers read back."""
        what = f"bus {self.bus.name} ({self.bus.describe()}) unit {unit} write holding registers " \
               f"{address}..{address + len(values) - 1}"
        words = [v & 0xFFFF for v in values]
        await self._request(what, lambda: self.client.write_registers(address, words, device_id=unit))

    def _enable_rs485(self, what: str) -> None:
        """Kernel RS-485 mode on the open serial port: RTS high while
        sending, low to receive, switched by the UART driver in time for
        the reply (hardware/coordinator-pi.md)."""
        from serial.rs485 import RS485Settings

        port = getattr(getattr(self.client.ctx, "transport", None), "sync_serial", None)
        try:
            if port is None:
                raise ValueError("pymodbus did not expose the serial port")
            port.rs485_mode = RS485Settings(rts_level_for_tx=True, rts_level_for_rx=False)
        except (ValueError, OSError) as e:
            self.client.close()
            raise ModbusReadError("connection", what, f"cannot switch {self.bus.device} to RS-485 mode ({e}); "
                                  "expected a UART whose driver supports RS-485 (see hardware/coordinator-pi.md) "
                                  "or rs485 = false for an adapter with automatic direction control") from None

    def close(self) -> None:
        self.client.close()


class Reader(Protocol):
    async def __call__(self, kind: RegisterKind, address: int, count: int) -> Sequence[int]: ...


class Driver(Protocol):
    model: str

    async def prepare(self, read: Reader) -> None:
        """Learn what the device serves (SunSpec discovery); may be called
        again after failures."""

    def plan(self) -> Sequence[ReadBlock]: ...

    def decode(self, blocks: Mapping[int, Sequence[int]], device: str, t: float) -> DeviceMeasurement: ...


class EastronDriver:
    def __init__(self, model_name: str) -> None:
        self.spec = eastron.model(model_name)
        self.model = model_name
        self.ready = True

    async def prepare(self, read: Reader) -> None:
        return None

    def plan(self) -> Sequence[ReadBlock]:
        return self.spec.plan

    def decode(self, blocks: Mapping[int, Sequence[int]], device: str, t: float) -> DeviceMeasurement:
        return eastron.decode(self.spec, blocks, device, t)


class SunSpecDriver:
    def __init__(self, kind: str, base: int = -1) -> None:
        self.wanted = sunspec.METER_IDS if kind == "sunspec-meter" else sunspec.INVERTER_IDS
        self.bases = sunspec.BASE_ADDRESSES if base < 0 else (base,)
        self.model = kind
        self.location: sunspec.ModelLocation | None = None
        self.identity: sunspec.SunSpecDevice | None = None

    async def prepare(self, read: Reader) -> None:
        found = await sunspec.discover(read, self.bases)
        self.location = found.find(self.wanted)
        self.identity = found
        self.model = f"sunspec-{self.location.model_id}"

    def plan(self) -> Sequence[ReadBlock]:
        if self.location is None:
            raise RegisterMapError("SunSpec device not discovered yet")
        return (ReadBlock("holding", self.location.address, self.location.length),)

    def decode(self, blocks: Mapping[int, Sequence[int]], device: str, t: float) -> DeviceMeasurement:
        assert self.location is not None
        return sunspec.decode(self.location.model_id, blocks[self.location.address], device, t)


def make_driver(device: ModbusDeviceSettings) -> Driver:
    if device.model in eastron.MODELS:
        return EastronDriver(device.model)
    return SunSpecDriver(device.model, device.sunspec_base)


@dataclass
class DeviceStatus:
    """What the technician's console and the telemetry show per device."""

    name: str
    source: str
    model: str
    bus: str
    unit: int
    ok: bool = False
    polls: int = 0
    failures: int = 0  # polls that produced no measurement
    retries: int = 0  # reads repeated after a failure
    consecutive_failures: int = 0
    last_ok_t: float | None = None
    last_error: str = ""
    last_error_kind: str = ""
    next_poll_in_s: float = 0.0


@dataclass
class _Device:
    settings: ModbusDeviceSettings
    link: ModbusLink
    driver: Driver
    status: DeviceStatus
    prepared: bool = False
    due: float = 0.0
    errors_by_kind: dict[str, int] = field(default_factory=dict)


MeasurementCallback = Callable[[DeviceMeasurement], Any]
StatusCallback = Callable[[DeviceStatus], Any]


class ModbusPoller:
    def __init__(self, settings: ModbusSettings, on_measurement: MeasurementCallback,
                 on_status: StatusCallback | None = None, clock: Callable[[], float] = time.time) -> None:
        settings.validate()
        self.settings = settings
        self.on_measurement = on_measurement
        self.on_status = on_status
        self.clock = clock
        self.links = {b.name: ModbusLink(b, settings.timeout_s) for b in settings.bus_settings()}
        self.devices: dict[str, _Device] = {}
        for d in settings.device_settings():
            status = DeviceStatus(d.name, f"modbus:{d.name}", d.model, d.bus, d.unit)
            self.devices[d.name] = _Device(d, self.links[d.bus], make_driver(d), status)
        self._stopping = asyncio.Event()

    def status(self) -> dict[str, DeviceStatus]:
        loop_now = _loop_time()
        return {name: replace(d.status, next_poll_in_s=max(0.0, d.due - loop_now)) for name, d in self.devices.items()}

    async def _read_with_retries(self, dev: _Device, kind: RegisterKind, address: int, count: int) -> Sequence[int]:
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                return await dev.link.read(kind, address, count, dev.settings.unit)
            except ModbusReadError as e:
                dev.errors_by_kind[e.kind] = dev.errors_by_kind.get(e.kind, 0) + 1
                if attempt + 1 == attempts or not _worth_retrying(e):
                    raise
                dev.status.retries += 1
                log.debug("modbus %s: %s; retrying (%d of %d)", dev.settings.name, e, attempt + 1, attempts - 1)
        raise AssertionError("unreachable")

    async def poll(self, name: str) -> DeviceMeasurement | None:
        """Poll one device now (with retries). Never raises for device
        trouble: the outcome is in `status()` and the log."""
        dev = self.devices[name]
        dev.status.polls += 1

        async def read(kind: RegisterKind, address: int, count: int) -> Sequence[int]:
            return await self._read_with_retries(dev, kind, address, count)

        try:
            if not dev.prepared:
                await dev.driver.prepare(read)
                dev.prepared = True
                dev.status.model = dev.driver.model
            blocks = {}
            for block in dev.driver.plan():
                blocks[block.address] = await read(block.kind, block.address, block.count)
            measurement = dev.driver.decode(blocks, name, self.clock())
        except (ModbusReadError, RegisterMapError) as e:
            self._failed(dev, e)
            return None
        except Exception as e:  # noqa: BLE001 - a driver bug must not stop the poller either
            log.exception("modbus %s: unexpected error", name)
            self._failed(dev, e)
            return None
        self._succeeded(dev)
        try:
            result = self.on_measurement(measurement)
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001
            log.exception("modbus %s: the measurement callback failed", name)
        return measurement

    def _failed(self, dev: _Device, error: Exception) -> None:
        st = dev.status
        st.failures += 1
        st.consecutive_failures += 1
        st.last_error = str(error)
        st.last_error_kind = error.kind if isinstance(error, ModbusReadError) else type(error).__name__
        if st.consecutive_failures >= 3 and isinstance(dev.driver, SunSpecDriver):
            dev.prepared = False  # the device may have been replaced: discover again
        if st.ok or st.consecutive_failures == 1:
            log.warning("modbus %s (%s unit %d) failing: %s", st.name, st.bus, st.unit, error)
        st.ok = False
        self._report(st)

    def _succeeded(self, dev: _Device) -> None:
        st = dev.status
        recovered = not st.ok
        if recovered and st.consecutive_failures:
            log.warning("modbus %s recovered after %d failed polls", st.name, st.consecutive_failures)
        st.ok = True
        st.consecutive_failures = 0
        st.last_ok_t = self.clock()
        if recovered:
            self._report(st)

    def _report(self, st: DeviceStatus) -> None:
        if self.on_status is not None:
            try:
                self.on_status(replace(st))
            except Exception:  # noqa: BLE001
                log.exception("modbus %s: the status callback failed", st.name)

    def _next_delay(self, dev: _Device) -> float:
        interval = dev.settings.interval_s
        n = dev.status.consecutive_failures
        if n == 0:
            return interval
        return min(interval * (2 ** min(n - 1, 20)), max(self.settings.backoff_max_s, interval))

    async def run(self) -> None:
        """Poll until `stop()`; each device at its own interval."""
        self._stopping.clear()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for dev in self.devices.values():
            dev.due = start
        while not self._stopping.is_set() and self.devices:
            dev = min(self.devices.values(), key=lambda d: d.due)
            delay = dev.due - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                    break
                except asyncio.TimeoutError:
                    pass
            await self.poll(dev.settings.name)
            # Keep the cadence of a healthy device; after a failure, back off
            # from now.
            if dev.status.consecutive_failures == 0:
                dev.due = max(dev.due + dev.settings.interval_s, loop.time())
            else:
                dev.due = loop.time() + self._next_delay(dev)
        if not self.devices:
            await self._stopping.wait()

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        self.stop()
        for link in self.links.values():
            link.close()


# Exception codes that say "try again": acknowledge (busy with a long
# command), device busy, gateway target did not respond.
_RETRY_CODES = (0x05, 0x06, 0x0B)


def _worth_retrying(e: ModbusReadError) -> bool:
    """Silence, a corrupted or short frame, or a busy device may pass; an
    illegal address or a refused connection will not within one poll."""
    if e.kind == "exception":
        return e.code in _RETRY_CODES
    return e.kind in ("timeout", "short")


def _loop_time() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()
