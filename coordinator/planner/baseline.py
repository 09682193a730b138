"""The rule-based schedule the planner is measured against (and what a
household without the planner does): charge the battery from surplus PV,
discharge it to cover the house's own load, charge the EV at full power
from the moment it is plugged in until it has what it needs. The grid
takes the rest. No prices, no forecasts: each slot reacts to itself.
"""

from __future__ import annotations

from .lp import ev_capacity_wh
from .model import BatterySpec, Plan, PlanInputs


def greedy_step(b: BatterySpec, soc_wh: float, load_wh: float, pv_wh: float, hours: float) -> tuple[float, float]:
    """(charge Wh, discharge Wh) for one slot with `soc_wh` stored."""
    surplus = pv_wh - load_wh
    if surplus > 0:
        room = max(0.0, b.top_wh - soc_wh) / b.charge_efficiency
        return min(surplus, b.max_charge_w * hours, room), 0.0
    available = max(0.0, soc_wh - b.min_soc_wh) * b.discharge_efficiency
    return 0.0, min(-surplus, b.max_discharge_w * hours, available)


def greedy_plan(inputs: PlanInputs) -> Plan:
    b = inputs.battery
    h = inputs.hours
    soc = b.soc_wh if b else 0.0
    need = inputs.ev.energy_wh if inputs.ev else 0.0
    imp, exp, ch, dis, ev, soc_series = [], [], [], [], [], []
    for t, cap in enumerate(ev_capacity_wh(inputs)):
        e = min(cap, need)
        need -= e
        load = inputs.load_wh[t] + e
        c = d = 0.0
        if b is not None:
            c, d = greedy_step(b, soc, load, inputs.pv_wh[t], h)
            soc += c * b.charge_efficiency - d / b.discharge_efficiency
        net = load + c - d - inputs.pv_wh[t]
        imp.append(max(net, 0.0))
        exp.append(max(-net, 0.0))
        ch.append(c)
        dis.append(d)
        ev.append(e)
        soc_series.append(soc)
    plan = Plan(inputs, imp, exp, ch, dis, ev, [0.0] * inputs.slots, soc_series, 0.0, solver="greedy")
    return Plan(inputs, imp, exp, ch, dis, ev, plan.curtail_wh, soc_series, plan.cost_sat(), solver="greedy")
