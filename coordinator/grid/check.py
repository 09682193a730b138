"""The power flow of each cleared interval, from what the meters measured.

For an interval, each member's metered net energy (Wh exported, positive,
or imported, negative, over the interval) becomes an average power
(Wh * 3600 / interval_s W) at its connection point; pandapower's AC power
flow gives every bus voltage and the loading of every line and of the
transformer. `IntervalCheck` keeps the extremes and counts the limits
broken (EN 50160: 0.90..1.10 pu; loading above 100 %), for the report
(`GridReport.to_dict`).

The check is the truth the market's linear limits are judged by
(bench/bench_grid.py): a market that respects its GridLimits should leave
none of these broken by what it traded.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .limits import GRID
from .model import GridModel, pandapower, run_power_flow


class GridCheckError(ValueError):
    """Metered values that cannot be placed on the network."""


@dataclass(frozen=True)
class IntervalCheck:
    start: int
    converged: bool
    min_vm_pu: float | None  # None: the power flow found no solution
    max_vm_pu: float | None
    max_line_loading_percent: float | None
    max_trafo_loading_percent: float | None
    voltage_violations: int  # buses outside [vmin, vmax]
    line_overloads: int  # lines above max loading
    trafo_overloads: int
    export_wh: int  # sum of the positive metered values
    import_wh: int  # sum of the negative ones, as a positive number

    @property
    def violated(self) -> bool:
        return not self.converged or bool(self.voltage_violations or self.line_overloads or self.trafo_overloads)


@dataclass
class GridReport:
    """The checks of a run of intervals, and their totals."""

    checks: list[IntervalCheck] = field(default_factory=list)

    def add(self, c: IntervalCheck) -> None:
        self.checks.append(c)

    def summary(self) -> dict[str, Any]:
        cs = [c for c in self.checks if c.converged]
        vmin = [c.min_vm_pu for c in cs if c.min_vm_pu is not None]
        vmax = [c.max_vm_pu for c in cs if c.max_vm_pu is not None]
        lines = [c.max_line_loading_percent for c in cs if c.max_line_loading_percent is not None]
        trafos = [c.max_trafo_loading_percent for c in cs if c.max_trafo_loading_percent is not None]
        return {
            "intervals": len(self.checks),
            "not_converged": len(self.checks) - len(cs),
            "intervals_with_voltage_violations": sum(1 for c in self.checks if c.voltage_violations),
            "intervals_with_overloads": sum(1 for c in self.checks if c.line_overloads or c.trafo_overloads),
            "bus_voltage_violations": sum(c.voltage_violations for c in self.checks),
            "min_vm_pu": min(vmin, default=None),
            "max_vm_pu": max(vmax, default=None),
            "max_line_loading_percent": max(lines, default=None),
            "max_trafo_loading_percent": max(trafos, default=None),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "intervals": [asdict(c) for c in self.checks]}


class GridCheck:
    """Runs the power flow of metered intervals on one model. Build it
    once: it prepares a copy of the net with one load per node."""

    def __init__(self, model: GridModel, vmin_pu: float = 0.90, vmax_pu: float = 1.10,
                 max_loading_percent: float = 100.0) -> None:
        pp = pandapower()
        self._pp = pp
        self.model = model
        self.vmin, self.vmax, self.max_loading = vmin_pu, vmax_pu, max_loading_percent
        self.net = copy.deepcopy(model.net)
        self._load: dict[str, int] = {}
        for point in model.nodes:
            bus = model.bus(point)
            if bus is not None:
                self._load[point] = int(pp.create_load(self.net, bus, p_mw=0.0, name=f"member:{point}"))

    def run(self, start: int, interval_s: int, metered_wh: Mapping[bytes, int]) -> IntervalCheck:
        """One interval: `metered_wh` is owner key -> Wh exported (+) or
        imported (-). Owners at GRID (the utility) are upstream of the
        feeder and left out; an owner the model does not place is an error."""
        if interval_s <= 0:
            raise GridCheckError(f"interval_s={interval_s}: expected > 0")
        per_point: dict[str, int] = {}
        for key, wh in metered_wh.items():
            point = self.model.members.get(key)
            if point is None:
                raise GridCheckError(f"metered owner {key.hex()[:16]} has no connection point in the model")
            if isinstance(wh, bool) or not isinstance(wh, int):
                raise GridCheckError(f"metered value for {key.hex()[:16]}: {wh!r} is not an integer Wh")
            if point != GRID:
                per_point[point] = per_point.get(point, 0) + wh
        net = self.net
        for point, idx in self._load.items():
            # A load's p_mw is what it takes: an export is a negative load.
            net.load.at[idx, "p_mw"] = -per_point.get(point, 0) * 3600 / interval_s / 1e6
        exported = sum(w for w in per_point.values() if w > 0)
        imported = -sum(w for w in per_point.values() if w < 0)
        try:
            run_power_flow(net)
        except self._pp.LoadflowNotConverged:
            return IntervalCheck(start, False, None, None, None, None, 0, 0, 0, exported, imported)
        lv = net.bus["vn_kv"] < 1.0
        vm = net.res_bus["vm_pu"][lv & net.bus["in_service"]]
        lines = net.res_line["loading_percent"][net.line["in_service"]]
        trafos = net.res_trafo["loading_percent"][net.trafo["in_service"]]
        return IntervalCheck(
            start, True, float(vm.min()), float(vm.max()),
            float(lines.max()) if len(lines) else 0.0, float(trafos.max()) if len(trafos) else 0.0,
            int(((vm < self.vmin) | (vm > self.vmax)).sum()),
            int((lines > self.max_loading).sum()), int((trafos > self.max_loading).sum()),
            exported, imported)
