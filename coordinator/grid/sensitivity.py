"""Voltage and flow sensitivities of the network model, as GridLimits.

How: one power flow of the empty feeder (no load, no generation: the
operating point), then one per node with 10 kW injected there. The change
of every bus voltage, line flow and transformer flow per watt is the
node's voltage sensitivity factor (VSF) and power transfer distribution
factor (PTDF); pandapower's full AC power flow, so meshed networks, cable
charging and the transformer are all in it. The flows of a trade between
two nodes are the difference of their columns (limits.py).

Why around the empty feeder: that is the conservative point for exports.
A trade's seller injects and its buyer withdraws; whatever else the
households consume is more withdrawal, which lowers the voltage. Voltage
rise per watt falls as the voltage rises (current = P / V), and a line's
current for a given flow is smaller above nominal voltage, so the
linear model overstates the rise and the loading of what the market
exports. `voltage_margin_pu` and `loading_margin_percent` keep a further
margin for what the model does not know (the upstream voltage, reactive
power).

Quantised to integers (limits.py's units, rounded to nearest): every
coordinator that computes from the same model gets the same table except
if a coefficient lands within ~1e-9 of a rounding edge on one machine and
not another; the table's digest, carried in every cleared interval, shows
that at once, and a zone can then publish one table for all.

Results are cached by the model's fingerprint: the limits are recomputed
when the network (or a member's place) changes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from .limits import SCALE, GridLimits
from .model import GridModel, pandapower, run_power_flow

DELTA_MW = 0.01  # the perturbation: 10 kW (a larger step divides the rounding noise of the power flow)


class SensitivityError(ValueError):
    """Settings out of range, or a network whose power flow fails."""


@dataclass(frozen=True)
class LimitSettings:
    """The limits to enforce (EN 50160: 230 V +-10 % at the connection)."""

    vmin_pu: float = 0.90
    vmax_pu: float = 1.10
    voltage_margin_pu: float = 0.01
    max_loading_percent: float = 100.0
    loading_margin_percent: float = 5.0

    def __post_init__(self) -> None:
        if not 0.5 <= self.vmin_pu < 1.0 < self.vmax_pu <= 1.5:
            raise SensitivityError(f"vmin_pu={self.vmin_pu}, vmax_pu={self.vmax_pu}: expected 0.5 <= vmin < 1 < vmax"
                                   " <= 1.5")
        if not 0 <= self.voltage_margin_pu < (self.vmax_pu - self.vmin_pu) / 2:
            raise SensitivityError(f"voltage_margin_pu={self.voltage_margin_pu}: expected 0 <= margin < half the band")
        if not 0 < self.max_loading_percent <= 200:
            raise SensitivityError(f"max_loading_percent={self.max_loading_percent}: expected 0 < x <= 200")
        if not 0 <= self.loading_margin_percent < self.max_loading_percent:
            raise SensitivityError(f"loading_margin_percent={self.loading_margin_percent}: expected 0 <= x <"
                                   f" max_loading_percent")


def _quantise(x: float) -> int:
    return int(round(x * SCALE))


def compute_limits(model: GridModel, settings: LimitSettings = LimitSettings()) -> GridLimits:
    """The GridLimits of `model` (1 + nodes power flows)."""
    pp = pandapower()
    net = copy.deepcopy(model.net)
    nodes = model.nodes
    buses = [model.bus(p) for p in nodes]
    sgens = {n: int(pp.create_sgen(net, bus, p_mw=0.0, name=f"probe:{nodes[n]}"))
             for n, bus in enumerate(buses) if bus is not None}

    def measure() -> tuple[Any, Any, Any]:
        try:
            run_power_flow(net)
        except pp.LoadflowNotConverged:
            raise SensitivityError("the network's power flow does not converge") from None
        return (net.res_bus["vm_pu"].to_numpy(copy=True), net.res_line["p_from_mw"].to_numpy(copy=True),
                net.res_trafo["p_lv_mw"].to_numpy(copy=True))

    v0, pl0, pt0 = measure()
    per_node: dict[int, tuple[Any, Any, Any]] = {}
    for n, sg in sgens.items():
        net.sgen.at[sg, "p_mw"] = DELTA_MW
        v, pl, pt = measure()
        net.sgen.at[sg, "p_mw"] = 0.0
        watts = DELTA_MW * 1e6
        per_node[n] = ((v - v0) / watts, (pl - pl0) / watts, (pt - pt0) / watts)

    s = settings
    names: list[str] = []
    budgets: list[int] = []
    coeffs: list[list[int]] = []  # per row, per node

    def row(name: str, headroom: float, ref: float, per_w: list[float]) -> None:
        a = [_quantise(x / ref) for x in per_w]
        if any(a):
            names.append(name)
            budgets.append(math.floor(headroom / ref * SCALE))
            coeffs.append(a)

    def column(i: int, which: int, sign: float) -> list[float]:
        return [sign * float(per_node[n][which][i]) if n in per_node else 0.0 for n in range(len(nodes))]

    band = s.vmax_pu - s.vmin_pu
    bus_name = net.bus["name"]
    for i, b in enumerate(net.res_bus.index):
        if not net.bus.at[b, "in_service"] or math.isnan(v0[i]):
            continue
        label = bus_name.at[b] if isinstance(bus_name.at[b], str) and bus_name.at[b] else f"bus{b}"
        row(f"vmax:{label}", s.vmax_pu - s.voltage_margin_pu - float(v0[i]), band, column(i, 0, 1.0))
        row(f"vmin:{label}", float(v0[i]) - s.vmin_pu - s.voltage_margin_pu, band, column(i, 0, -1.0))
    usable = (s.max_loading_percent - s.loading_margin_percent) / 100
    for i, ln in enumerate(net.res_line.index):
        line = net.line.loc[ln]
        if not line["in_service"]:
            continue
        rated = math.sqrt(3) * float(net.bus.at[line["from_bus"], "vn_kv"]) * float(line["max_i_ka"]) \
            * float(line["df"]) * float(line["parallel"])
        label = line["name"] if isinstance(line["name"], str) and line["name"] else f"line{ln}"
        row(f"line+:{label}", rated * usable - float(pl0[i]), rated, column(i, 1, 1.0))
        row(f"line-:{label}", rated * usable + float(pl0[i]), rated, column(i, 1, -1.0))
    for i, tr in enumerate(net.res_trafo.index):
        trafo = net.trafo.loc[tr]
        if not trafo["in_service"]:
            continue
        rated = float(trafo["sn_mva"])
        label = trafo["name"] if isinstance(trafo["name"], str) and trafo["name"] else f"trafo{tr}"
        row(f"trafo+:{label}", rated * usable - float(pt0[i]), rated, column(i, 2, 1.0))
        row(f"trafo-:{label}", rated * usable + float(pt0[i]), rated, column(i, 2, -1.0))

    index = {p: n for n, p in enumerate(nodes)}
    owners = tuple(sorted((key, index[p]) for key, p in model.members.items()))
    columns = tuple(tuple(c[n] for c in coeffs) for n in range(len(nodes)))
    return GridLimits(owners, tuple(nodes), tuple(names), tuple(budgets), columns)


_cache: dict[tuple[bytes, LimitSettings], GridLimits] = {}


def limits_for(model: GridModel, settings: LimitSettings = LimitSettings()) -> GridLimits:
    """compute_limits, cached by the model's fingerprint and the settings:
    a changed network or member placement gives new limits."""
    key = (model.fingerprint(), settings)
    got = _cache.get(key)
    if got is None:
        if len(_cache) > 16:
            _cache.clear()
        got = _cache[key] = compute_limits(model, settings)
    return got
