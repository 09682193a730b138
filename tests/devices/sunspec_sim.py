"""SunSpec devices laid out by pysunspec2 itself: each model's register
block is what `sunspec2.device.Model` encodes for the points a test sets
(every other point "not implemented", ID and L included), so the battery
driver is tested against SunSpec's reference implementation of the
layout, not against the project's own tables. What a driver wrote is
decoded back with pysunspec2 too (`model_from`).

Values are given as the raw integers the registers hold (SunSpec's
"value"), scale factors as exponents, e.g. {"SoC": 5500, "SoC_SF": -2}.
"""

from __future__ import annotations

from typing import Any, Mapping

from sunspec2 import device as sunspec_device

from .modbus_server import ServedDevice

BASE = 40000


def model_regs(model_id: int, values: Mapping[str, int]) -> list[int]:
    """ID, L and the data of one model, by pysunspec2."""
    m = sunspec_device.Model(model_id)
    for name, v in values.items():
        m.points[name].set_value(v)  # KeyError for a point the model does not have: a test typo
    raw = m.get_mb()
    return [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]


def common(manufacturer: str = "Example Storage", model: str = "ES-10", serial: str = "B0001") -> dict[str, Any]:
    return {"Mn": manufacturer, "Md": model, "SN": serial, "Vr": "1.2.3"}


def sunspec2_device(unit: int, models: list[tuple[int, Mapping[str, Any]]], base: int = BASE,
                    writable_models: tuple[int, ...] = (124,)) -> ServedDevice:
    """"SunS", model 1 (always first), `models`, the end model, from
    `base`. Holding registers of `writable_models` take writes where
    SunSpec marks the point RW; any other write answers ILLEGAL_ADDRESS."""
    dev = ServedDevice(unit)
    regs = [0x5375, 0x6E53]
    writable: set[int] = set()
    for model_id, values in [(1, common())] + list(models):
        start = base + len(regs)
        regs += model_regs(model_id, values)
        if model_id in writable_models:
            m = sunspec_device.Model(model_id)
            for p in m.points.values():
                if p.pdef.get("access") == "RW":
                    writable.update(range(start + p.offset, start + p.offset + p.len))
    regs += [0xFFFF, 0]
    dev.set_registers("holding", base, regs)
    dev.set_registers("input", 0, [0])
    dev.writable = writable
    return dev


def locate(dev: ServedDevice, model_id: int, base: int = BASE) -> tuple[int, int]:
    """(address of the model's ID register, L) in `dev`'s holding bank."""
    addr = base + 2
    while dev.holding[addr] != 0xFFFF:
        if dev.holding[addr] == model_id:
            return addr, dev.holding[addr + 1]
        addr += 2 + dev.holding[addr + 1]
    raise KeyError(model_id)


def model_from(dev: ServedDevice, model_id: int, base: int = BASE) -> Any:
    """The model as the device holds it now, decoded by pysunspec2."""
    addr, length = locate(dev, model_id, base)
    raw = b"".join(dev.holding[a].to_bytes(2, "big") for a in range(addr, addr + 2 + length))
    m = sunspec_device.Model(model_id)
    m.set_mb(raw)
    return m


def set_points(dev: ServedDevice, model_id: int, base: int = BASE, **values: int) -> None:
    """Change points of a model live (the next read sees them)."""
    addr, _ = locate(dev, model_id, base)
    m = model_from(dev, model_id, base)
    for name, v in values.items():
        m.points[name].set_value(v)
    raw = m.get_mb()
    dev.set_registers("holding", addr, [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)])
