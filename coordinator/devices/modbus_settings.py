"""The [modbus] section of the coordinator's configuration.

    [modbus]
    enabled = true
    interval_s = 10.0        # default poll interval per device
    timeout_s = 1.0          # per request
    retries = 2              # immediate retries of a failed read within one poll
    backoff_max_s = 300.0    # a device failing again and again is polled at most this rarely

    [modbus.buses.cabinet]   # RS-485 on the Pi's UART (hardware/coordinator-pi.md)
    kind = "rtu"             # rtu | tcp | rtu-over-tcp (an RS-485 gateway passing RTU frames)
    device = "/dev/ttyAMA3"
    baudrate = 9600
    parity = "N"             # N | E | O
    stopbits = 1
    bytesize = 8
    rs485 = true             # kernel RS-485 mode: the UART's RTS drives the transceiver's DE//RE

    [modbus.buses.inverter_lan]
    kind = "tcp"
    host = "192.0.2.20"
    port = 502

    [modbus.devices.house]   # name: A-Z a-z 0-9 _ - ; readings get source "modbus:house"
    bus = "cabinet"
    unit = 1                 # Modbus unit (slave) id, 1..247
    model = "sdm630"         # sdm120 | sdm630 | sunspec-meter | sunspec-inverter
    interval_s = 5.0         # optional; the [modbus] default otherwise

    [modbus.devices.roof_pv]
    bus = "inverter_lan"
    unit = 1
    model = "sunspec-inverter"
    sunspec_base = 40000     # optional; found automatically (40000, 0, 50000) otherwise

>>> s = ModbusSettings(buses={"b": {"kind": "tcp", "host": "127.0.0.1"}},
...                    devices={"m": {"bus": "b", "model": "sdm630"}}).validate()
>>> s.device_settings()[0].interval_s
10.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


class ModbusSettingsError(ValueError):
    """A [modbus] setting is missing, of the wrong type or out of range."""


NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
BUS_KINDS = ("rtu", "tcp", "rtu-over-tcp")
MODELS = ("sdm120", "sdm630", "sunspec-meter", "sunspec-inverter")
_BUS_KEYS = {"kind": str, "device": str, "host": str, "port": int, "baudrate": int, "parity": str, "stopbits": int,
             "bytesize": int, "rs485": bool}
_DEVICE_KEYS = {"bus": str, "unit": int, "model": str, "interval_s": float, "sunspec_base": int}


@dataclass(frozen=True)
class ModbusBusSettings:
    name: str
    kind: str
    device: str = ""  # serial port (rtu)
    host: str = ""  # tcp, rtu-over-tcp
    port: int = 502
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    # Switch the serial port to the kernel's RS-485 mode (TIOCSRS485), so
    # the driver raises RTS (wired to DE and /RE) exactly while sending.
    # Off for USB adapters with automatic direction control.
    rs485: bool = False

    def describe(self) -> str:
        if self.kind == "rtu":
            return f"{self.device} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"
        return f"{self.kind}://{self.host}:{self.port}"


@dataclass(frozen=True)
class ModbusDeviceSettings:
    name: str
    bus: str
    model: str
    unit: int = 1
    interval_s: float = 10.0
    sunspec_base: int = -1  # -1: search 40000, 0, 50000


@dataclass
class ModbusSettings:
    enabled: bool = False
    interval_s: float = 10.0
    timeout_s: float = 1.0
    retries: int = 2
    backoff_max_s: float = 300.0
    buses: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self, section: str = "modbus") -> "ModbusSettings":
        _number(f"{section}.interval_s", self.interval_s, 0.05, 86400)
        _number(f"{section}.timeout_s", self.timeout_s, 0.01, 60)
        _number(f"{section}.backoff_max_s", self.backoff_max_s, 0.05, 86400)
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or not 0 <= self.retries <= 10:
            raise ModbusSettingsError(f"{section}.retries={self.retries!r}: expected an integer in 0..10")
        if not isinstance(self.enabled, bool):
            raise ModbusSettingsError(f"{section}.enabled={self.enabled!r}: expected true or false")
        buses = {b.name: b for b in self.bus_settings(section)}
        for d in self.device_settings(section):
            if d.bus not in buses:
                raise ModbusSettingsError(f"{section}.devices.{d.name}.bus={d.bus!r}: no such bus; expected one of "
                                          f"{', '.join(buses) or '(none: add a [modbus.buses.NAME] table)'}")
        return self

    def bus_settings(self, section: str = "modbus") -> list[ModbusBusSettings]:
        out = []
        for name, raw in _tables(f"{section}.buses", self.buses):
            key = f"{section}.buses.{name}"
            _known(key, raw, _BUS_KEYS)
            kind = raw.get("kind")
            if kind not in BUS_KINDS:
                raise ModbusSettingsError(f"{key}.kind={kind!r}: expected one of {', '.join(BUS_KINDS)}")
            bus = ModbusBusSettings(name, **raw)
            if kind == "rtu":
                if not bus.device:
                    raise ModbusSettingsError(f"{key}.device: missing; expected a serial port such as /dev/ttyAMA3 or /dev/ttyUSB0")
                if bus.parity not in ("N", "E", "O"):
                    raise ModbusSettingsError(f"{key}.parity={bus.parity!r}: expected N, E or O")
                if bus.stopbits not in (1, 2):
                    raise ModbusSettingsError(f"{key}.stopbits={bus.stopbits!r}: expected 1 or 2")
                if bus.bytesize not in (7, 8):
                    raise ModbusSettingsError(f"{key}.bytesize={bus.bytesize!r}: expected 7 or 8")
                if bus.baudrate not in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200):
                    raise ModbusSettingsError(f"{key}.baudrate={bus.baudrate!r}: expected one of 1200, 2400, 4800, "
                                              "9600, 19200, 38400, 57600, 115200")
            else:
                if bus.rs485:
                    raise ModbusSettingsError(f"{key}.rs485: only a serial bus (kind = \"rtu\") has an RS-485 mode")
                if not bus.host:
                    raise ModbusSettingsError(f"{key}.host: missing; expected the device's or gateway's address")
                if not 1 <= bus.port <= 65535:
                    raise ModbusSettingsError(f"{key}.port={bus.port!r}: expected an integer in 1..65535")
            out.append(bus)
        return out

    def device_settings(self, section: str = "modbus") -> list[ModbusDeviceSettings]:
        out = []
        for name, raw in _tables(f"{section}.devices", self.devices):
            key = f"{section}.devices.{name}"
            _known(key, raw, _DEVICE_KEYS)
            if raw.get("model") not in MODELS:
                raise ModbusSettingsError(f"{key}.model={raw.get('model')!r}: expected one of {', '.join(MODELS)}")
            if "bus" not in raw:
                raise ModbusSettingsError(f"{key}.bus: missing; expected the name of a [modbus.buses.NAME] table")
            d = ModbusDeviceSettings(name, raw["bus"], raw["model"], raw.get("unit", 1),
                                     float(raw.get("interval_s", self.interval_s)), raw.get("sunspec_base", -1))
            if not 1 <= d.unit <= 247:
                raise ModbusSettingsError(f"{key}.unit={d.unit!r}: expected a Modbus unit id in 1..247")
            _number(f"{key}.interval_s", d.interval_s, 0.05, 86400)
            if not -1 <= d.sunspec_base <= 65535:
                raise ModbusSettingsError(f"{key}.sunspec_base={d.sunspec_base!r}: expected -1 (search) or a register address")
            out.append(d)
        return out


def _tables(key: str, raw: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(raw, dict):
        raise ModbusSettingsError(f"{key}={raw!r}: expected a table of tables")
    out = []
    for name, value in raw.items():
        if not NAME.match(name):
            raise ModbusSettingsError(f"{key}.{name}: names use 1-64 of A-Z a-z 0-9 _ -")
        if not isinstance(value, dict):
            raise ModbusSettingsError(f"{key}.{name}={value!r}: expected a table")
        out.append((name, value))
    return out


def _known(key: str, raw: dict[str, Any], keys: dict[str, type]) -> None:
    for k, v in raw.items():
        if k not in keys:
            raise ModbusSettingsError(f"{key}.{k}: unknown setting; allowed: {', '.join(keys)}")
        want = keys[k]
        ok = isinstance(v, want) and (want is bool or not isinstance(v, bool))
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            ok = True
        if not ok:
            raise ModbusSettingsError(f"{key}.{k}={v!r}: expected {want.__name__}")


def _number(key: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ModbusSettingsError(f"{key}={value!r}: expected a number in {lo}..{hi}")
