"""Eastron SDM120-Modbus and SDM630-Modbus V2 register maps.

Every measured value is an IEEE-754 float in two input registers (function
0x04), high word first. Addresses below are the 0-based PDU addresses
(Eastron's manuals print them as 3xxxx, 1-based, and as hex "Modbus
protocol start address"); energies are in kWh.

    SDM120-Modbus                      SDM630-Modbus V2
    0x0000 voltage V                   0x0000..0x0004 L1..L3 voltage (L-N) V
    0x0006 current A                   0x0006..0x000A L1..L3 current A
    0x000C active power W              0x000C..0x0010 L1..L3 active power W
    0x0012 apparent power VA           0x001E..0x0022 L1..L3 power factor
    0x0018 reactive power VAr          0x002A average L-N voltage V
    0x001E power factor                0x0030 sum of line currents A
    0x0046 frequency Hz                0x0034 total system power W
    0x0048 import active energy kWh    0x003E total system power factor
    0x004A export active energy kWh    0x0046 frequency Hz
                                       0x0048 import active energy kWh
                                       0x004A export active energy kWh

An SDM's power is negative while exporting, as ours. Eastron meters answer
at most 80 registers (40 values) per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .registers import DeviceMeasurement, ReadBlock, RegisterMapError, block_values, energy_wh, f32


@dataclass(frozen=True)
class EastronModel:
    name: str
    plan: tuple[ReadBlock, ...]
    # our field -> register address of its float
    fields: Mapping[str, int]
    # extra values (name -> address), e.g. per-phase figures
    extra: Mapping[str, int]


SDM120 = EastronModel(
    "sdm120",
    (ReadBlock("input", 0x0000, 0x20), ReadBlock("input", 0x0046, 6)),
    {"voltage_v": 0x0000, "current_a": 0x0006, "power_w": 0x000C, "power_factor": 0x001E,
     "frequency_hz": 0x0046, "import_kwh": 0x0048, "export_kwh": 0x004A},
    {"apparent_power_va": 0x0012, "reactive_power_var": 0x0018},
)

SDM630 = EastronModel(
    "sdm630",
    (ReadBlock("input", 0x0000, 0x50),),
    {"voltage_v": 0x002A, "current_a": 0x0030, "power_w": 0x0034, "power_factor": 0x003E,
     "frequency_hz": 0x0046, "import_kwh": 0x0048, "export_kwh": 0x004A},
    {"l1_voltage_v": 0x0000, "l2_voltage_v": 0x0002, "l3_voltage_v": 0x0004,
     "l1_current_a": 0x0006, "l2_current_a": 0x0008, "l3_current_a": 0x000A,
     "l1_power_w": 0x000C, "l2_power_w": 0x000E, "l3_power_w": 0x0010,
     "l1_power_factor": 0x001E, "l2_power_factor": 0x0020, "l3_power_factor": 0x0022},
)

MODELS = {m.name: m for m in (SDM120, SDM630)}


def model(name: str) -> EastronModel:
    if name not in MODELS:
        raise RegisterMapError(f"Eastron model {name!r}: expected one of {', '.join(MODELS)}")
    return MODELS[name]


def decode(m: EastronModel, blocks: Mapping[int, Sequence[int]], device: str, t: float) -> DeviceMeasurement:
    """The measurement in `blocks` (start address -> registers, as read by
    `m.plan`)."""

    def value(address: int) -> float:
        return f32(block_values(blocks, m.plan, address, 2), 0)

    f = {key: value(addr) for key, addr in m.fields.items()}
    return DeviceMeasurement(
        device=device,
        source=f"modbus:{device}",
        model=m.name,
        t=t,
        import_wh=energy_wh(f["import_kwh"], f"{m.name} import energy (0x{m.fields['import_kwh']:04X})"),
        export_wh=energy_wh(f["export_kwh"], f"{m.name} export energy (0x{m.fields['export_kwh']:04X})"),
        power_w=_finite(f["power_w"]),
        voltage_v=_finite(f["voltage_v"]),
        current_a=_finite(f["current_a"]),
        frequency_hz=_finite(f["frequency_hz"]),
        power_factor=_finite(f["power_factor"]),
        extra={k: v for k, a in m.extra.items() if (v := _finite(value(a))) is not None},
    )


def _finite(x: float) -> float | None:
    """A float32 as the value it stands for: 7 significant digits (50.01,
    not 50.0099983215332); None for NaN or infinity."""
    if x != x or x in (float("inf"), float("-inf")):
        return None
    return float(f"{x:.7g}")
