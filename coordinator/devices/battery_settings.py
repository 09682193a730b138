"""The [battery] section: the household's home batteries.

    [battery]
    hold_s = 900.0             # a command without an expiry holds this long, then the device's own mode returns
    timeout_s = 2.0            # per Modbus request

    [battery.units.home]       # name: A-Z a-z 0-9 _ -
    kind = "sunspec"           # sunspec | huawei | simulated
    bus = "inverter_lan"       # a [modbus.buses.NAME] (sunspec, huawei)
    unit = 1                   # Modbus unit id
    sunspec_base = -1          # -1: search 40000, 0, 50000
    capacity_wh = 0            # sunspec: when the device reports none; simulated: its size
    invert_power = false       # sunspec: the device counts model 802 W charge-positive

    [battery.units.demo]
    kind = "simulated"
    capacity_wh = 10000
    max_charge_w = 5000.0
    max_discharge_w = 5000.0
    charge_efficiency = 0.95
    discharge_efficiency = 0.95
    standby_w = 10.0
    min_soc_pct = 10.0
    max_soc_pct = 100.0
    initial_soc_pct = 50.0

>>> BatterySettings(units={"b": {"kind": "simulated"}}).validate().unit_settings()[0].spec.capacity_wh
10000
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .simulated import SimulatedBatterySpec


class BatterySettingsError(ValueError):
    """A [battery] setting is missing, of the wrong type or out of range."""


NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
KINDS = ("sunspec", "huawei", "simulated")
_MODBUS_KEYS: dict[str, type] = {"kind": str, "bus": str, "unit": int, "sunspec_base": int, "capacity_wh": int,
                                 "invert_power": bool}
_SIM_KEYS: dict[str, type] = {"kind": str, "capacity_wh": int, "max_charge_w": float, "max_discharge_w": float,
                              "charge_efficiency": float, "discharge_efficiency": float, "standby_w": float,
                              "min_soc_pct": float, "max_soc_pct": float, "initial_soc_pct": float}


@dataclass(frozen=True)
class BatteryUnitSettings:
    name: str
    kind: str
    bus: str = ""
    unit: int = 1
    sunspec_base: int = -1
    capacity_wh: int = 0
    invert_power: bool = False
    spec: SimulatedBatterySpec = field(default_factory=SimulatedBatterySpec)


@dataclass
class BatterySettings:
    hold_s: float = 900.0
    timeout_s: float = 2.0
    units: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self, section: str = "battery") -> "BatterySettings":
        _num(f"{section}.hold_s", self.hold_s, 10, 65534)
        _num(f"{section}.timeout_s", self.timeout_s, 0.05, 60)
        self.unit_settings(section)
        return self

    def unit_settings(self, section: str = "battery") -> list[BatteryUnitSettings]:
        if not isinstance(self.units, dict):
            raise BatterySettingsError(f"{section}.units={self.units!r}: expected a table of tables")
        out = []
        for name, raw in self.units.items():
            key = f"{section}.units.{name}"
            if not NAME.match(name):
                raise BatterySettingsError(f"{key}: names use 1-64 of A-Z a-z 0-9 _ -")
            if not isinstance(raw, dict):
                raise BatterySettingsError(f"{key}={raw!r}: expected a table")
            kind = raw.get("kind")
            if kind not in KINDS:
                raise BatterySettingsError(f"{key}.kind={kind!r}: expected one of {', '.join(KINDS)}")
            keys = _SIM_KEYS if kind == "simulated" else _MODBUS_KEYS
            values = _typed(key, raw, keys)
            if kind == "simulated":
                spec_kw = {k: v for k, v in values.items() if k != "kind"}
                try:
                    spec = SimulatedBatterySpec(**spec_kw, hold_s=self.hold_s).validate(key)
                except ValueError as e:
                    raise BatterySettingsError(str(e)) from None
                out.append(BatteryUnitSettings(name, kind, capacity_wh=spec.capacity_wh, spec=spec))
                continue
            if not values.get("bus"):
                raise BatterySettingsError(f"{key}.bus: missing; expected the name of a [modbus.buses.NAME] table")
            u = BatteryUnitSettings(name, kind, values["bus"], values.get("unit", 1), values.get("sunspec_base", -1),
                                    values.get("capacity_wh", 0), values.get("invert_power", False))
            if not 0 <= u.unit <= 247:
                raise BatterySettingsError(f"{key}.unit={u.unit!r}: expected a Modbus unit id in 0..247")
            if not -1 <= u.sunspec_base <= 65535:
                raise BatterySettingsError(f"{key}.sunspec_base={u.sunspec_base!r}: expected -1 (search) or an address")
            if not 0 <= u.capacity_wh <= 10_000_000:
                raise BatterySettingsError(f"{key}.capacity_wh={u.capacity_wh!r}: expected 0..10000000 Wh")
            if kind == "huawei" and ("sunspec_base" in raw or "invert_power" in raw):
                raise BatterySettingsError(f"{key}: sunspec_base and invert_power apply to kind = \"sunspec\" only")
            out.append(u)
        return out


def _typed(key: str, raw: dict[str, Any], keys: dict[str, type]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        want = keys.get(k)
        if want is None:
            raise BatterySettingsError(f"{key}.{k}: unknown setting for this kind; allowed: {', '.join(keys)}")
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, want) or (want is not bool and isinstance(v, bool)):
            raise BatterySettingsError(f"{key}.{k}={v!r}: expected {want.__name__}")
        out[k] = v
    return out


def _num(key: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise BatterySettingsError(f"{key}={value!r}: expected a number in {lo}..{hi}")
