"""Register-level pieces shared by the register maps: what one read asks
for, the measurement a device yields, and decoders for the value types
Modbus devices use (all pure functions of register lists).

Modbus registers are 16-bit words; 32-bit values span two registers with
the high word first ("big-endian word order"), as both Eastron and SunSpec
lay them out.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

RegisterKind = Literal["input", "holding"]


class RegisterMapError(ValueError):
    """Registers read do not decode as the map expects (NaN energy, a
    missing block, an unknown model)."""


class ModbusReadError(Exception):
    """A read failed. `kind`: "connection" (cannot reach the device or
    gateway), "timeout" (no valid answer: silence or a corrupted frame,
    which a CRC or length check discards), "exception" (the device
    answered with a Modbus exception code) or "short" (fewer registers than
    asked)."""

    def __init__(self, kind: str, what: str, detail: str, code: int | None = None) -> None:
        self.kind = kind
        self.code = code  # the Modbus exception code of kind "exception"
        self.what = what
        self.detail = detail
        super().__init__(f"{what}: {detail}")


@dataclass(frozen=True)
class ReadBlock:
    """One read request: `count` registers from `address` (0-based PDU
    address), function 0x04 for input registers, 0x03 for holding."""

    kind: RegisterKind
    address: int
    count: int


@dataclass(frozen=True)
class DeviceMeasurement:
    """What a wired meter or inverter reported, normalised to the fields of
    a signed reading (shared/reading.py). Power is signed + import, -
    export; an inverter's produced energy counts as export. None: the
    device does not provide that value."""

    device: str  # the configured name
    source: str  # "modbus:<device>"
    model: str  # "sdm630", "sunspec-203", "sunspec-103" ...
    t: float  # Unix seconds, from the clock passed to the poller
    import_wh: int | None
    export_wh: int | None
    power_w: float | None
    voltage_v: float | None = None
    current_a: float | None = None
    frequency_hz: float | None = None
    power_factor: float | None = None
    extra: Mapping[str, float] = field(default_factory=dict)


def u16(regs: Sequence[int], i: int) -> int:
    return regs[i] & 0xFFFF


def i16(regs: Sequence[int], i: int) -> int:
    v = regs[i] & 0xFFFF
    return v - 0x10000 if v & 0x8000 else v


def u32(regs: Sequence[int], i: int) -> int:
    return ((regs[i] & 0xFFFF) << 16) | (regs[i + 1] & 0xFFFF)


def f32(regs: Sequence[int], i: int) -> float:
    """IEEE-754 single precision, high word first."""
    value: float = struct.unpack(">f", struct.pack(">HH", regs[i] & 0xFFFF, regs[i + 1] & 0xFFFF))[0]
    return value


def text(regs: Sequence[int]) -> str:
    """A string of registers, two ASCII bytes each, NUL padded."""
    raw = b"".join(struct.pack(">H", r & 0xFFFF) for r in regs)
    return raw.split(b"\x00", 1)[0].decode("ascii", errors="replace").strip()


def energy_wh(kwh: float, what: str) -> int:
    """kWh (a float register) to whole Wh, rounding to nearest: the meter
    counts whole Wh and the float carries them rounded."""
    if math.isnan(kwh) or math.isinf(kwh) or kwh < 0:
        raise RegisterMapError(f"{what} register holds {kwh!r} kWh; expected a non-negative number")
    return int(kwh * 1000 + 0.5)


def block_values(blocks: Mapping[int, Sequence[int]], plan: Sequence[ReadBlock], address: int, count: int) -> Sequence[int]:
    """The `count` registers at `address` out of blocks read by `plan`
    (keyed by their start address)."""
    for b in plan:
        if b.address <= address and address + count <= b.address + b.count:
            regs = blocks.get(b.address)
            if regs is None or len(regs) < b.count:
                raise RegisterMapError(f"block at {b.address} was not read in full; expected {b.count} registers")
            return regs[address - b.address : address - b.address + count]
    raise RegisterMapError(f"register {address} (+{count}) is outside every block of the read plan")
