"""SunSpec register maps: meters (models 201-204) and inverters (101-103).

A SunSpec device serves holding registers (function 0x03) from a base
address (40000, else 0 or 50000): the marker "SunS" (0x5375 0x6E53), then
a chain of models, each `ID, L` followed by L registers, ending with ID
0xFFFF. Model 1 (common) names the manufacturer, model and serial number.

Values are integers with a scale factor register (sunssf): value *
10**sf. "Not implemented" is 0x8000 for int16 and sunssf, 0xFFFF for
uint16 and 0 for acc32 (accumulators).

Meter models 201 (single phase), 202 (split phase), 203 (wye) and 204
(delta) share one layout of 105 registers; offsets from the first data
register (after ID and L):

     0 A       4 A_SF    5 PhV (L-N average)  9 PPV (L-L average)  13 V_SF
    14 Hz     15 Hz_SF  16 W   17..19 WphA..C  20 W_SF
    31 PF     35 PF_SF  (PF in percent)
    36 TotWhExp (acc32)  44 TotWhImp (acc32)  52 TotWh_SF

Meter power is positive while the site imports, as ours.

Inverter models 101 (single phase), 102 (split), 103 (three phase), 50
registers:

     0 A (uint16)   4 A_SF   5 PPVphAB   8 PhVphA   11 V_SF
    12 W (int16)   13 W_SF  14 Hz (uint16) 15 Hz_SF
    20 PF (percent) 21 PF_SF 22 WH (acc32, lifetime)  24 WH_SF
    29 DCW         30 DCW_SF 31 TmpCab   35 Tmp_SF    36 St (operating state)

An inverter's AC output is export for us: export_wh = WH, power_w = -W.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from .registers import DeviceMeasurement, ModbusReadError, RegisterKind, RegisterMapError, i16, text, u16, u32

MARKER = (0x5375, 0x6E53)  # "SunS"
BASE_ADDRESSES = (40000, 0, 50000)
END_ID = 0xFFFF
COMMON_ID = 1
METER_IDS = (201, 202, 203, 204)
INVERTER_IDS = (101, 102, 103)
METER_LENGTH = 105
INVERTER_LENGTH = 50
MAX_MODELS = 64  # a chain longer than this is a broken device
INVERTER_STATES = {1: "off", 2: "sleeping", 3: "starting", 4: "mppt", 5: "throttled", 6: "shutting_down",
                   7: "fault", 8: "standby"}

Reader = Callable[[RegisterKind, int, int], Awaitable[Sequence[int]]]


@dataclass(frozen=True)
class ModelLocation:
    model_id: int
    address: int  # first data register (after ID and L)
    length: int


@dataclass(frozen=True)
class SunSpecDevice:
    base: int
    models: tuple[ModelLocation, ...]
    manufacturer: str = ""
    model_name: str = ""
    serial: str = ""

    def find(self, wanted: Sequence[int]) -> ModelLocation:
        for m in self.models:
            if m.model_id in wanted:
                return m
        have = ", ".join(str(m.model_id) for m in self.models) or "none"
        raise RegisterMapError(f"SunSpec device at base {self.base} has models {have}; expected one of "
                               f"{', '.join(str(w) for w in wanted)}")


async def discover(read: Reader, bases: Sequence[int] = BASE_ADDRESSES) -> SunSpecDevice:
    """Walk the model chain. `read(kind, address, count)` raises
    ModbusReadError on a failed read; a base answered with an exception
    code or without the marker is skipped."""
    tried = []
    for base in bases:
        try:
            marker = await read("holding", base, 2)
        except ModbusReadError as e:
            if e.kind != "exception":
                raise  # the device is not answering at all: say so
            tried.append(f"{base}: {e.detail}")  # an absent base answers with an exception code
            continue
        if tuple(marker) != MARKER:
            tried.append(f"{base}: {[hex(r) for r in marker]}")
            continue
        return await _walk(read, base)
    raise RegisterMapError("no SunSpec marker 'SunS' (0x5375 0x6E53) at any base address (" + "; ".join(tried) + ")")


async def _walk(read: Reader, base: int) -> SunSpecDevice:
    models = []
    addr = base + 2
    for _ in range(MAX_MODELS):
        header = await read("holding", addr, 2)
        model_id, length = u16(header, 0), u16(header, 1)
        if model_id == END_ID:
            break
        models.append(ModelLocation(model_id, addr + 2, length))
        addr += 2 + length
        if addr + 2 > 0x10000:  # a length that runs past the register space: a broken or hostile device
            raise RegisterMapError(f"SunSpec model {model_id} at {addr - length} claims {length} registers, past "
                                   "the last register address (65535)")
    else:
        raise RegisterMapError(f"SunSpec model chain from base {base} has more than {MAX_MODELS} models; "
                               "expected an end model (0xFFFF)")
    device = SunSpecDevice(base, tuple(models))
    common = next((m for m in models if m.model_id == COMMON_ID), None)
    if common is not None and common.length >= 64:
        regs = await read("holding", common.address, 64)
        device = SunSpecDevice(base, tuple(models), text(regs[0:16]), text(regs[16:32]), text(regs[48:64]))
    return device


def _scaled(value: int | None, sf_reg: int) -> float | None:
    if value is None:
        return None
    sf = i16([sf_reg], 0)
    if sf_reg == 0x8000 or not -10 <= sf <= 10:
        return None
    return round(value * 10.0**sf, -sf) if sf < 0 else float(value * 10**sf)


def _int16(regs: Sequence[int], i: int) -> int | None:
    return None if u16(regs, i) == 0x8000 else i16(regs, i)


def _uint16(regs: Sequence[int], i: int) -> int | None:
    v = u16(regs, i)
    return None if v == 0xFFFF else v


def _acc32(regs: Sequence[int], i: int) -> int | None:
    v = u32(regs, i)
    return None if v == 0 else v


def _wh(value: float | None) -> int | None:
    return None if value is None else int(value + 0.5)


def _pct(value: float | None) -> float | None:
    return None if value is None else value / 100.0


def decode_meter(model_id: int, regs: Sequence[int], device: str, t: float) -> DeviceMeasurement:
    """A meter model's data registers (105 of them) as a measurement."""
    if model_id not in METER_IDS:
        raise RegisterMapError(f"SunSpec model {model_id}: expected a meter model ({', '.join(map(str, METER_IDS))})")
    if len(regs) < METER_LENGTH:
        raise RegisterMapError(f"SunSpec meter model {model_id}: {len(regs)} registers; expected {METER_LENGTH}")
    v_sf = regs[13]
    voltage = _scaled(_int16(regs, 5), v_sf)
    if voltage is None:  # delta meters report line-to-line only
        voltage = _scaled(_int16(regs, 9), v_sf)
    wh_sf = regs[52]
    extra = {}
    for i, phase in enumerate(("l1", "l2", "l3")):
        w = _scaled(_int16(regs, 17 + i), regs[20])
        if w is not None and model_id != 201:
            extra[f"{phase}_power_w"] = w
    return DeviceMeasurement(
        device=device,
        source=f"modbus:{device}",
        model=f"sunspec-{model_id}",
        t=t,
        import_wh=_wh(_scaled(_acc32(regs, 44), wh_sf)),
        export_wh=_wh(_scaled(_acc32(regs, 36), wh_sf)),
        power_w=_scaled(_int16(regs, 16), regs[20]),
        voltage_v=voltage,
        current_a=_scaled(_int16(regs, 0), regs[4]),
        frequency_hz=_scaled(_int16(regs, 14), regs[15]),
        power_factor=_pct(_scaled(_int16(regs, 31), regs[35])),
        extra=extra,
    )


def decode_inverter(model_id: int, regs: Sequence[int], device: str, t: float) -> DeviceMeasurement:
    """An inverter model's data registers (50 of them) as a measurement."""
    if model_id not in INVERTER_IDS:
        raise RegisterMapError(f"SunSpec model {model_id}: expected an inverter model ({', '.join(map(str, INVERTER_IDS))})")
    if len(regs) < INVERTER_LENGTH:
        raise RegisterMapError(f"SunSpec inverter model {model_id}: {len(regs)} registers; expected {INVERTER_LENGTH}")
    w = _scaled(_int16(regs, 12), regs[13])
    extra: dict[str, float] = {}
    dcw = _scaled(_int16(regs, 29), regs[30])
    if dcw is not None:
        extra["dc_power_w"] = dcw
    tmp = _scaled(_int16(regs, 31), regs[35])
    if tmp is not None:
        extra["cabinet_temperature_c"] = tmp
    state = _uint16(regs, 36)
    if state is not None:
        extra["operating_state"] = float(state)
    return DeviceMeasurement(
        device=device,
        source=f"modbus:{device}",
        model=f"sunspec-{model_id}",
        t=t,
        import_wh=None,
        export_wh=_wh(_scaled(_acc32(regs, 22), regs[24])),
        power_w=None if w is None else -w,
        voltage_v=_scaled(_uint16(regs, 8), regs[11]),
        current_a=_scaled(_uint16(regs, 0), regs[4]),
        frequency_hz=_scaled(_uint16(regs, 14), regs[15]),
        power_factor=_pct(_scaled(_int16(regs, 20), regs[21])),
        extra=extra,
    )


def decode(model_id: int, regs: Sequence[int], device: str, t: float) -> DeviceMeasurement:
    if model_id in METER_IDS:
        return decode_meter(model_id, regs, device, t)
    return decode_inverter(model_id, regs, device, t)
