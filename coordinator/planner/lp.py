"""The day-ahead schedule as a linear program, solved by HiGHS (highspy).

Why HiGHS: the maintained open-source LP solver that SciPy itself ships
(`linprog(method="highs")`), with official Python wheels; a 96-slot day
is ~670 variables and ~200 rows, solved in milliseconds.

Variables per slot t (Wh in the slot; h = slot_s / 3600):
    imp_t   bought     0..import_limit_w * h
    exp_t   sold       0..export_limit_w * h
    ch_t    into the battery   0..max_charge_w * h
    dis_t   out of the battery 0..max_discharge_w * h
    ev_t    into the EV        0..max_power_w * (hours the EV is plugged in, in the slot, before its deadline)
    cur_t   PV not used        0..pv_t (when export is capped or pays < 0)
    soc_t   stored at the slot's end, min_soc..max_soc
Rows:
    balance  pv_t - cur_t + imp_t + dis_t = load_t + ch_t + ev_t + exp_t
    storage  soc_t = soc_(t-1) + ch_t * charge_eff - dis_t / discharge_eff   (soc_(-1): now)
    ev       sum ev_t >= the energy the EV needs within the horizon (all of
             it when the deadline is inside; beyond, what charging at full
             power after the horizon's end could not still deliver)
    end      soc at the end >= soc now: the plan may not sell the battery
             empty at the horizon's edge (rolling horizon, periodic day)
    peak     imp_t / h <= P   (one more variable: the horizon's highest import power)
Minimise  sum buy_t imp_t - sell_t exp_t + degradation dis_t   (sat/kWh / 1000)
          + peak_sat_per_kw P / 1000
plus tie-breakers far below a satoshi: trade no more than needed, curtail
last, and store energy (battery and EV) earlier rather than later when
costs are equal.

A stored floor below which the battery already is (soc now < min_soc)
holds at soc now (the plan is not forced to charge), and likewise a
ceiling: the LP is always feasible for the battery alone; what can make it
infeasible is the load (beyond the connection and the battery) and the EV.
Those are checked first with a message saying which slot or need fails.
"""

from __future__ import annotations

import dataclasses
import math

import highspy
import numpy as np

from .model import Plan, PlanInfeasible, PlanInputs

_K = 7  # variable kinds per slot
IMP, EXP, CH, DIS, EV, CUR, SOC = range(_K)
_EPS = 1e-6  # sat per Wh: breaks ties only (a 96-slot day sums to far below 1 sat)


def ev_capacity_wh(inputs: PlanInputs) -> list[float]:
    """Most energy the EV can take in each slot."""
    ev = inputs.ev
    if ev is None:
        return [0.0] * inputs.slots
    plugged = inputs.start if ev.available_from is None else max(ev.available_from, inputs.start)
    out = []
    for t in range(inputs.slots):
        a, b = inputs.start + t * inputs.slot_s, inputs.start + (t + 1) * inputs.slot_s
        overlap = max(0, min(b, ev.deadline) - max(a, plugged))
        out.append(ev.max_power_w * overlap / 3600.0)
    return out


def ev_need_in_horizon(inputs: PlanInputs) -> float:
    """What the EV must get within the horizon: beyond its end, charging
    at full power until the deadline can still deliver the rest."""
    ev = inputs.ev
    if ev is None:
        return 0.0
    end = inputs.start + inputs.slots * inputs.slot_s
    later_s = max(0, ev.deadline - max(end, ev.available_from or end))
    return max(0.0, ev.energy_wh - ev.max_power_w * later_s / 3600.0)


def check_feasible(inputs: PlanInputs) -> None:
    """Necessary conditions, each with the reason it fails (the LP alone
    would only say "infeasible")."""
    h = inputs.hours
    need = ev_need_in_horizon(inputs)
    can = sum(ev_capacity_wh(inputs))
    if need > can + 1e-6:
        ev = inputs.ev
        assert ev is not None
        raise PlanInfeasible(f"the EV needs {need:.0f} Wh by {ev.deadline} but at most {can:.0f} Wh can be "
                             f"delivered at {ev.max_power_w:.0f} W while it is plugged in")
    b = inputs.battery
    most_out = b.max_discharge_w * h if b else 0.0
    for t, (load, pv) in enumerate(zip(inputs.load_wh, inputs.pv_wh)):
        short = load - pv
        if short > inputs.import_limit_w * h + most_out + 1e-6:
            raise PlanInfeasible(f"slot {t} (from {inputs.start + t * inputs.slot_s}): load {load:.0f} Wh less PV "
                                 f"{pv:.0f} Wh exceeds the connection's {inputs.import_limit_w * h:.0f} Wh plus the "
                                 f"battery's {most_out:.0f} Wh")


def solve(inputs: PlanInputs, time_limit_s: float = 10.0) -> Plan:
    """The cheapest schedule; raises PlanInfeasible (with the reason)
    when there is none."""
    check_feasible(inputs)
    T, h = inputs.slots, inputs.hours
    b = inputs.battery
    peak = _K * T  # the column of P, after the per-slot ones
    n = _K * T + 1

    def col(kind: int, t: int) -> int:
        return kind * T + t

    lower = np.zeros(n)
    upper = np.zeros(n)
    cost = np.zeros(n)
    load = np.asarray(inputs.load_wh, dtype=float)
    pv = np.asarray(inputs.pv_wh, dtype=float)
    buy = np.asarray(inputs.buy_sat_per_kwh, dtype=float) / 1000.0
    sell = np.asarray(inputs.sell_sat_per_kwh, dtype=float) / 1000.0
    sl = slice(col(IMP, 0), col(IMP, 0) + T)
    upper[sl], cost[sl] = inputs.import_limit_w * h, buy + _EPS
    sl = slice(col(EXP, 0), col(EXP, 0) + T)
    upper[sl], cost[sl] = inputs.export_limit_w * h, -sell + _EPS
    soc0 = b.soc_wh if b else 0.0
    if b is not None:
        upper[col(CH, 0):col(CH, 0) + T] = b.max_charge_w * h
        upper[col(DIS, 0):col(DIS, 0) + T] = b.max_discharge_w * h
        cost[col(DIS, 0):col(DIS, 0) + T] = b.degradation_sat_per_kwh / 1000.0
        cost[col(CH, 0):col(CH, 0) + T] = _EPS
        floor, top = min(b.min_soc_wh, soc0), max(b.top_wh, soc0)
        lower[col(SOC, 0):col(SOC, 0) + T] = floor
        upper[col(SOC, 0):col(SOC, 0) + T] = top
        lower[col(SOC, T - 1)] = max(floor, min(soc0, top))
        # Stored sooner rather than later when it costs the same (PV kept
        # now instead of exported now and stored later): forecasts err, and
        # energy already stored is not at their mercy.
        cost[col(SOC, 0):col(SOC, 0) + T] = -_EPS / 10
    upper[col(EV, 0):col(EV, 0) + T] = ev_capacity_wh(inputs)
    cost[col(EV, 0):col(EV, 0) + T] = _EPS * (1.0 + np.arange(T) / T)
    upper[col(CUR, 0):col(CUR, 0) + T] = pv
    cost[col(CUR, 0):col(CUR, 0) + T] = 2 * _EPS
    upper[peak] = inputs.import_limit_w
    cost[peak] = inputs.peak_sat_per_kw / 1000.0

    # Rows as (row, col, value) triplets, then column-wise for HiGHS.
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []

    def put(r: int, c: int, v: float) -> None:
        rows.append(r)
        cols.append(c)
        vals.append(v)

    ec = b.charge_efficiency if b else 1.0
    ed = b.discharge_efficiency if b else 1.0
    row_lo: list[float] = []
    row_hi: list[float] = []
    for t in range(T):  # balance: imp - exp - ch + dis - ev - cur = load - pv
        for kind, v in ((IMP, 1.0), (EXP, -1.0), (CH, -1.0), (DIS, 1.0), (EV, -1.0), (CUR, -1.0)):
            put(t, col(kind, t), v)
        row_lo.append(load[t] - pv[t])
        row_hi.append(load[t] - pv[t])
    for t in range(T):  # storage: soc_t - soc_(t-1) - ec ch_t + dis_t / ed = soc0 at t = 0, else 0
        r = T + t
        put(r, col(SOC, t), 1.0)
        if t:
            put(r, col(SOC, t - 1), -1.0)
        put(r, col(CH, t), -ec)
        put(r, col(DIS, t), 1.0 / ed)
        rhs = soc0 if t == 0 else 0.0
        row_lo.append(rhs)
        row_hi.append(rhs)
    if inputs.peak_sat_per_kw > 0:
        for t in range(T):  # imp_t - h P <= 0
            r = len(row_lo)
            put(r, col(IMP, t), 1.0)
            put(r, peak, -h)
            row_lo.append(-math.inf)
            row_hi.append(0.0)
    need = ev_need_in_horizon(inputs)
    if need > 0:
        r = len(row_lo)
        for t in range(T):
            put(r, col(EV, t), 1.0)
        row_lo.append(need)
        row_hi.append(math.inf)

    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = len(row_lo)
    lp.col_cost_ = cost
    lp.col_lower_ = lower
    lp.col_upper_ = upper
    lp.row_lower_ = np.asarray(row_lo)
    lp.row_upper_ = np.asarray(row_hi)
    r_arr, c_arr, v_arr = np.asarray(rows), np.asarray(cols), np.asarray(vals)
    order = np.lexsort((r_arr, c_arr))
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.searchsorted(c_arr[order], np.arange(n + 1)).astype(np.int32)
    lp.a_matrix_.index_ = r_arr[order].astype(np.int32)
    lp.a_matrix_.value_ = v_arr[order]
    solver = highspy.Highs()
    solver.setOptionValue("output_flag", False)
    solver.setOptionValue("time_limit", float(time_limit_s))
    solver.passModel(lp)
    solver.run()
    status = solver.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise PlanInfeasible(f"the solver found no schedule: {solver.modelStatusToString(status)}")
    x = np.asarray(solver.getSolution().col_value)

    def series(kind: int) -> list[float]:
        # Clip the solver's 1e-9 noise to the bounds, so callers see exact limits.
        return [float(v) for v in np.clip(x[col(kind, 0):col(kind, 0) + T], lower[col(kind, 0):col(kind, 0) + T],
                                          upper[col(kind, 0):col(kind, 0) + T])]

    plan = Plan(inputs, import_wh=series(IMP), export_wh=series(EXP), charge_wh=series(CH),
                discharge_wh=series(DIS), ev_wh=series(EV), curtail_wh=series(CUR), soc_wh=series(SOC),
                objective_sat=0.0)
    return dataclasses.replace(plan, objective_sat=plan.cost_sat())
