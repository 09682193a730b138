"""What the planner plans with: plain values, no I/O.

Units: energy in Wh per slot, power in W, prices in sat/kWh, times in Unix
seconds (integers, passed in). A slot is one market interval.

The battery and EV are described by what the plan needs, not by a
driver: `BatterySpec.from_state` reads any object shaped like
coordinator/devices/interface.py's `BatteryState` (soc_pct, capacity_wh,
max_charge_w, max_discharge_w, min_soc_pct, max_soc_pct), so the planner
does not import the drivers.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence


FOLLOW = "follow"  # the device's own self-consumption mode (Plan.battery_mode)
SETPOINT = "setpoint"  # the plan's power, commanded


class PlanInputError(ValueError):
    """Inputs the planner cannot use: names the field, the value and what
    was expected."""


class PlanInfeasible(RuntimeError):
    """No schedule meets every constraint (an EV that cannot get its
    energy in time, a load above the connection limit). `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _finite(name: str, value: float, lo: float = 0.0, hi: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise PlanInputError(f"{name}={value!r}: expected a finite number in {lo}..{hi}")


class BatteryStateLike(Protocol):
    soc_pct: float
    capacity_wh: int
    max_charge_w: float
    max_discharge_w: float
    min_soc_pct: float
    max_soc_pct: float


@dataclass(frozen=True)
class BatterySpec:
    """A home battery as the plan sees it. `soc_wh` is stored energy now;
    the plan keeps it within [min_soc_wh, max_soc_wh]. Efficiencies are
    one-way: charging `c` Wh from the house stores c x charge_efficiency,
    taking `d` Wh into the house draws d / discharge_efficiency from
    storage. Degradation is charged per kWh discharged (the wear of a
    full cycle, priced)."""

    capacity_wh: float
    soc_wh: float
    max_charge_w: float
    max_discharge_w: float
    min_soc_wh: float = 0.0
    max_soc_wh: float | None = None  # None: capacity_wh
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    degradation_sat_per_kwh: float = 0.0

    def __post_init__(self) -> None:
        _finite("battery.capacity_wh", self.capacity_wh, 1.0, 10**7)
        top = self.top_wh
        _finite("battery.max_soc_wh", top, 0.0, self.capacity_wh)
        _finite("battery.min_soc_wh", self.min_soc_wh, 0.0, top)
        _finite("battery.soc_wh", self.soc_wh, 0.0, self.capacity_wh)
        _finite("battery.max_charge_w", self.max_charge_w, 0.0, 10**7)
        _finite("battery.max_discharge_w", self.max_discharge_w, 0.0, 10**7)
        _finite("battery.charge_efficiency", self.charge_efficiency, 0.01, 1.0)
        _finite("battery.discharge_efficiency", self.discharge_efficiency, 0.01, 1.0)
        _finite("battery.degradation_sat_per_kwh", self.degradation_sat_per_kwh, 0.0, 10**8)

    @property
    def top_wh(self) -> float:
        return self.capacity_wh if self.max_soc_wh is None else self.max_soc_wh

    @classmethod
    def from_state(cls, state: BatteryStateLike, charge_efficiency: float = 0.95,
                   discharge_efficiency: float = 0.95, degradation_sat_per_kwh: float = 0.0,
                   reserve_wh: float = 0.0) -> "BatterySpec":
        """From a driver's reading; `reserve_wh` (the household's rule)
        raises the floor above the device's own reserve."""
        cap = float(state.capacity_wh)
        return cls(capacity_wh=cap, soc_wh=min(max(cap * state.soc_pct / 100.0, 0.0), cap),
                   max_charge_w=state.max_charge_w, max_discharge_w=state.max_discharge_w,
                   min_soc_wh=min(max(cap * state.min_soc_pct / 100.0, reserve_wh), cap * state.max_soc_pct / 100.0),
                   max_soc_wh=cap * state.max_soc_pct / 100.0, charge_efficiency=charge_efficiency,
                   discharge_efficiency=discharge_efficiency, degradation_sat_per_kwh=degradation_sat_per_kwh)


@dataclass(frozen=True)
class EvNeed:
    """An EV plugged in (or expected from `available_from`) that needs
    `energy_wh` more by `deadline`, charging at up to `max_power_w`."""

    energy_wh: float
    deadline: int
    max_power_w: float
    available_from: int | None = None  # None: plugged in now

    def __post_init__(self) -> None:
        _finite("ev.energy_wh", self.energy_wh, 0.0, 10**6)
        _finite("ev.max_power_w", self.max_power_w, 0.0, 10**6)
        if isinstance(self.deadline, bool) or not isinstance(self.deadline, int):
            raise PlanInputError(f"ev.deadline={self.deadline!r}: expected Unix seconds (an integer)")
        if self.available_from is not None and (not isinstance(self.available_from, int)
                                                or self.available_from > self.deadline):
            raise PlanInputError(f"ev.available_from={self.available_from!r}: expected Unix seconds before the "
                                 f"deadline {self.deadline}")


@dataclass(frozen=True)
class PlanInputs:
    """One optimisation: `len(load_wh)` slots of `slot_s` from `start`.
    Prices are what a Wh bought or sold in each slot is expected to cost
    or earn (prices.py combines the tariff, the expected market price and
    the household's rules into these)."""

    start: int
    slot_s: int
    load_wh: Sequence[float]
    pv_wh: Sequence[float]
    buy_sat_per_kwh: Sequence[float]
    sell_sat_per_kwh: Sequence[float]
    import_limit_w: float
    export_limit_w: float
    battery: BatterySpec | None = None
    ev: EvNeed | None = None
    # Where each slot's prices came from ("tariff", "market"), for the journal.
    price_source: Sequence[str] = field(default=())
    # Cost of the horizon's highest import power (sat per kW): spreads
    # imports over equally priced slots instead of every EV and battery
    # of a feeder starting together when the cheap hours begin.
    peak_sat_per_kw: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.load_wh)
        if n < 1 or n > 2000:
            raise PlanInputError(f"load_wh has {n} slots: expected 1..2000")
        if isinstance(self.slot_s, bool) or not isinstance(self.slot_s, int) or not 60 <= self.slot_s <= 86_400:
            raise PlanInputError(f"slot_s={self.slot_s!r}: expected an integer 60..86400")
        for name in ("pv_wh", "buy_sat_per_kwh", "sell_sat_per_kwh"):
            if len(getattr(self, name)) != n:
                raise PlanInputError(f"{name} has {len(getattr(self, name))} slots: expected {n}, as load_wh")
        for name in ("load_wh", "pv_wh"):
            for i, v in enumerate(getattr(self, name)):
                _finite(f"{name}[{i}]", v, 0.0, 10**7)
        for name in ("buy_sat_per_kwh", "sell_sat_per_kwh"):
            for i, v in enumerate(getattr(self, name)):
                _finite(f"{name}[{i}]", v, -10**8, 10**8)
        _finite("import_limit_w", self.import_limit_w, 0.0, 10**8)
        _finite("export_limit_w", self.export_limit_w, 0.0, 10**8)
        _finite("peak_sat_per_kw", self.peak_sat_per_kw, 0.0, 10**8)
        for i, (b, s) in enumerate(zip(self.buy_sat_per_kwh, self.sell_sat_per_kwh)):
            if s > b:
                # Buying and selling at once would be free money: the plan
                # would just cycle the connection at its limits.
                raise PlanInputError(f"slot {i}: sell price {s} above buy price {b}: expected sell <= buy")

    @property
    def slots(self) -> int:
        return len(self.load_wh)

    @property
    def hours(self) -> float:
        return self.slot_s / 3600.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("load_wh", "pv_wh", "buy_sat_per_kwh", "sell_sat_per_kwh", "price_source"):
            d[k] = list(d[k])
        return d

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the inputs: two decisions with
        the same digest were made from the same facts."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Plan:
    """A schedule, one value per slot (Wh in the slot). `charge_wh` is
    drawn from the house into the battery, `discharge_wh` delivered by it
    to the house; `soc_wh` is stored energy at the slot's end."""

    inputs: PlanInputs
    import_wh: list[float]
    export_wh: list[float]
    charge_wh: list[float]
    discharge_wh: list[float]
    ev_wh: list[float]
    curtail_wh: list[float]
    soc_wh: list[float]
    objective_sat: float
    solver: str = "highs"

    def battery_setpoint_w(self, slot: int) -> float:
        """+ charging, - discharging, the average power over the slot (the
        devices' sign convention)."""
        return (self.charge_wh[slot] - self.discharge_wh[slot]) / self.inputs.hours

    def battery_mode(self, slot: int) -> str:
        """FOLLOW when the battery's part in the slot is what the device's
        own self-consumption mode does anyway (the plan trades nothing with
        the grid and the battery balances the house, or the battery runs at
        full power one way and the grid takes the rest): the device then
        follows the real load and PV within the slot, which a fixed
        setpoint computed from forecasts cannot. SETPOINT otherwise
        (charging from the grid, holding energy for later, selling from
        the battery): the plan's power is commanded."""
        b = self.inputs.battery
        if b is None:
            return SETPOINT
        tol = 1.0
        h = self.inputs.hours
        imp, exp = self.import_wh[slot], self.export_wh[slot]
        ch, dis = self.charge_wh[slot], self.discharge_wh[slot]
        if imp <= tol and exp <= tol:
            return FOLLOW
        if imp <= tol and dis <= tol and ch >= b.max_charge_w * h - tol:
            return FOLLOW
        if exp <= tol and ch <= tol and dis >= b.max_discharge_w * h - tol:
            return FOLLOW
        return SETPOINT

    def ev_power_w(self, slot: int) -> float:
        return self.ev_wh[slot] / self.inputs.hours

    def cost_sat(self) -> float:
        """What the schedule costs: energy bought minus sold, plus wear and
        the peak's cost."""
        return schedule_cost(self.inputs, self.import_wh, self.export_wh, self.discharge_wh)


def schedule_cost(inputs: PlanInputs, import_wh: Sequence[float], export_wh: Sequence[float],
                  discharge_wh: Sequence[float]) -> float:
    """Energy bought minus sold, plus wear, plus the peak's cost."""
    deg = inputs.battery.degradation_sat_per_kwh if inputs.battery else 0.0
    energy = sum(b * i - s * e + deg * d for b, s, i, e, d in zip(inputs.buy_sat_per_kwh, inputs.sell_sat_per_kwh,
                                                                    import_wh, export_wh, discharge_wh))
    peak_kw = max(import_wh, default=0.0) / inputs.hours / 1000.0
    return energy / 1000.0 + inputs.peak_sat_per_kw * peak_kw
