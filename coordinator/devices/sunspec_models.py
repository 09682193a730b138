"""SunSpec model layouts taken from SunSpec's own model definitions
(pysunspec2's JSON models), so offsets, types and scale factors are the
standard's, not retyped by hand.

A `ModelLayout` gives each top-level point of a model its offset from the
first data register (after ID and L, as `sunspec.ModelLocation.address`),
its type and the name of its scale-factor point. `value()` decodes one
point of a register block read from a device: None when the device marks
it "not implemented" (0x8000 for int16/sunssf, 0xFFFF for uint16, enum16
and bitfield16, 0 for acc32 ...), or when its scale factor is not
implemented or outside the standard's -10..10. `encode()` turns a value
into the registers to write, with the device's scale factor.

Only the fixed part of a model is laid out: repeating groups (e.g. 803's
strings) are not needed by the battery driver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

from sunspec2 import device as sunspec_device
from sunspec2 import mdef

from .registers import RegisterMapError

# Registers a point of each type occupies (strings: their size).
_SIZES = {mdef.TYPE_INT16: 1, mdef.TYPE_UINT16: 1, mdef.TYPE_COUNT: 1, mdef.TYPE_ACC16: 1, mdef.TYPE_ENUM16: 1,
          mdef.TYPE_BITFIELD16: 1, mdef.TYPE_PAD: 1, mdef.TYPE_SUNSSF: 1, mdef.TYPE_INT32: 2, mdef.TYPE_UINT32: 2,
          mdef.TYPE_ACC32: 2, mdef.TYPE_ENUM32: 2, mdef.TYPE_BITFIELD32: 2, mdef.TYPE_FLOAT32: 2,
          mdef.TYPE_IPADDR: 2, mdef.TYPE_INT64: 4, mdef.TYPE_UINT64: 4, mdef.TYPE_ACC64: 4, mdef.TYPE_FLOAT64: 4,
          mdef.TYPE_EUI48: 4, mdef.TYPE_IPV6ADDR: 8}

# The "not implemented" value of each numeric type (SunSpec Information
# Model Specification, "Unimplemented Registers").
_NOT_IMPLEMENTED = {mdef.TYPE_INT16: 0x8000, mdef.TYPE_SUNSSF: 0x8000, mdef.TYPE_UINT16: 0xFFFF,
                    mdef.TYPE_ENUM16: 0xFFFF, mdef.TYPE_BITFIELD16: 0xFFFF, mdef.TYPE_COUNT: 0,
                    mdef.TYPE_ACC16: 0, mdef.TYPE_INT32: 0x80000000, mdef.TYPE_UINT32: 0xFFFFFFFF,
                    mdef.TYPE_ENUM32: 0xFFFFFFFF, mdef.TYPE_BITFIELD32: 0xFFFFFFFF, mdef.TYPE_ACC32: 0}
_SIGNED = (mdef.TYPE_INT16, mdef.TYPE_SUNSSF, mdef.TYPE_INT32)


@dataclass(frozen=True)
class Point:
    name: str
    offset: int  # from the first data register
    type: str
    size: int
    sf: str | None  # name of the scale-factor point, or None
    writable: bool
    mandatory: bool
    symbols: Mapping[str, int]


@dataclass(frozen=True)
class ModelLayout:
    model_id: int
    name: str
    length: int  # data registers of the fixed part (the model's L without repeating groups)
    points: Mapping[str, Point]

    def point(self, name: str) -> Point:
        try:
            return self.points[name]
        except KeyError:
            raise RegisterMapError(f"SunSpec model {self.model_id} ({self.name}) has no point {name!r}") from None

    def raw(self, regs: Sequence[int], name: str) -> int | None:
        """The point's integer as stored, None if not implemented."""
        p = self.point(name)
        if p.offset + p.size > len(regs):
            raise RegisterMapError(f"SunSpec model {self.model_id}: {len(regs)} registers read; point {name} needs "
                                   f"{p.offset + p.size}")
        v = 0
        for r in regs[p.offset:p.offset + p.size]:
            v = (v << 16) | (r & 0xFFFF)
        if _NOT_IMPLEMENTED.get(p.type) == v:
            return None
        if p.type in _SIGNED and v >= 1 << (16 * p.size - 1):
            v -= 1 << (16 * p.size)
        return v

    def scale(self, regs: Sequence[int], name: str) -> int | None:
        """The point's scale factor exponent (0 without one), None if the
        device leaves it unimplemented or outside -10..10."""
        p = self.point(name)
        if p.sf is None:
            return 0
        if p.sf not in self.points:  # a scale factor in another model: not used here
            raise RegisterMapError(f"SunSpec model {self.model_id}: point {name}'s scale factor {p.sf} is not in the model")
        sf = self.raw(regs, p.sf)
        if sf is None or not -10 <= sf <= 10:
            return None
        return sf

    def value(self, regs: Sequence[int], name: str) -> float | None:
        """The point's value in its units (raw x 10^sf), None if the point
        or its scale factor is not implemented."""
        raw = self.raw(regs, name)
        sf = self.scale(regs, name)
        if raw is None or sf is None:
            return None
        return raw * 10.0**sf if sf < 0 else float(raw * 10**sf)

    def encode(self, regs: Sequence[int], name: str, value: float) -> tuple[int, list[int], float]:
        """(offset, registers, value as the device will hold it) to write
        `value` into point `name`, scaled by the scale factor in `regs`
        (the model as last read). Raises RegisterMapError for a read-only
        point, an unimplemented scale factor or a value the type cannot hold."""
        p = self.point(name)
        if not p.writable:
            raise RegisterMapError(f"SunSpec model {self.model_id}: point {name} is read-only")
        if math.isnan(value) or math.isinf(value):
            raise RegisterMapError(f"SunSpec model {self.model_id}: {value!r} for {name}; expected a number")
        sf = self.scale(regs, name)
        if sf is None:
            raise RegisterMapError(f"SunSpec model {self.model_id}: scale factor {p.sf} of {name} is not implemented")
        raw = int(round(value / 10.0**sf))
        bits = 16 * p.size
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if p.type in _SIGNED else (0, (1 << bits) - 1)
        ni = _NOT_IMPLEMENTED.get(p.type)
        if not lo <= raw <= hi or (ni is not None and raw & ((1 << bits) - 1) == ni and ni != 0):
            raise RegisterMapError(f"SunSpec model {self.model_id}: {value} does not fit {name} ({p.type}, sf {sf})")
        u = raw & ((1 << bits) - 1)
        out = [(u >> (16 * (p.size - 1 - i))) & 0xFFFF for i in range(p.size)]
        return p.offset, out, raw * 10.0**sf


@lru_cache(maxsize=None)
def layout(model_id: int) -> ModelLayout:
    """The layout of a model from pysunspec2's definition. Raises
    RegisterMapError for a model SunSpec does not define."""
    try:
        mdef_ = sunspec_device.get_model_def(model_id)
    except Exception as e:  # noqa: BLE001 - pysunspec2 raises a plain Exception for an unknown model
        raise RegisterMapError(f"SunSpec model {model_id}: no definition in pysunspec2 ({e})") from None
    group = mdef_[mdef.GROUP]
    points: dict[str, Point] = {}
    offset = 0
    for pd in group[mdef.POINTS]:
        ptype = pd[mdef.TYPE]
        size = int(pd.get(mdef.SIZE) or _SIZES.get(ptype, 1))
        symbols = {s[mdef.NAME]: int(s[mdef.VALUE]) for s in pd.get(mdef.SYMBOLS, [])}
        points[pd[mdef.NAME]] = Point(pd[mdef.NAME], offset - 2, ptype, size, pd.get(mdef.SF),
                                      pd.get(mdef.ACCESS) == mdef.ACCESS_RW,
                                      pd.get(mdef.MANDATORY) == mdef.MANDATORY_TRUE, symbols)
        offset += size
    return ModelLayout(model_id, group[mdef.NAME], offset - 2, points)
