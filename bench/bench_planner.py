"""The household's planner: time of one day-ahead plan, and what it saves
over the rule-based baseline on a sample week of a small feeder, both
measured in this run.

    python bench/bench_planner.py [--days 7] [--households 6] [--seed 1] [--runs 20] [--perfect]

1. Solve time. One 96-slot plan (15 min intervals, battery, EV, PV, a
   time-of-use tariff): the LP alone (HiGHS), and with the pvlib forecast,
   best and median of `--runs`; the baseline is the greedy rule-based
   schedule of the same inputs. The issue's bar: one household's plan in
   <= 1 s.
2. A sample week of a feeder, simulated slot by slot (rolling horizon: a
   plan every 15 min). Households drawn with the seed: 0/3/5/8 kWp south
   in Amsterdam in May, no battery or 5/10 kWh (C/2, 95 % each way,
   20 sat/kWh wear), an EV or not (plugged in at 18:00 on weekdays, 12 kWh
   by 07:00 at 7.4 kW), 6-14 kWh a day. Import 150 sat/kWh at night
   (00-07), 400 at the evening peak (17-21), 250 otherwise; export 40.
   What happens differs from the forecasts: each day's clouds (a seeded
   share of clear sky, 0.3..1.0) and the load's noise (+-30 % per slot
   around the household's typical day).
   - baseline: what a household does without the planner: the battery
     charges from surplus and discharges to the house, the EV charges at
     full power from the moment it is plugged in;
   - planner: plans every slot from forecasts (the typical day; clear sky
     x 0.8, the next hours leaning on the clouds its PV meter measured in
     the last complete slot), as the service does 30 s before the slot; in
     slots where the plan is what self-consumption does the battery is
     left to it (it follows what really happens), otherwise the plan's
     setpoint is applied as far as the battery's state allows; the grid
     takes the rest;
   - `--perfect` adds the planner knowing the future (what forecast errors
     cost).
   Printed: each household's bill, the feeder's bill (energy and battery
   wear; the energy left in the batteries beyond their start credited at
   the night tariff) and its peak import (the households' net imports
   summed per slot), the EV energy short at the deadlines, the feeder's
   self-sufficiency (1 - what it imported / what its houses and EVs used,
   exports of one house netted against imports of another in the same
   slot), and the ratios.
   There is no peer trading here (bench_market measures the market): the
   utility's tariff alone, the same for both.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - run from a checkout

from microgrid.coordinator.planner.baseline import greedy_plan, greedy_step  # noqa: E402
from microgrid.coordinator.planner.load import TYPICAL_DAY  # noqa: E402
from microgrid.coordinator.planner.lp import solve  # noqa: E402
from microgrid.coordinator.planner.model import FOLLOW, SETPOINT, BatterySpec, EvNeed, PlanInputs  # noqa: E402
from microgrid.coordinator.planner.pv import PvArray, nowcast, observed_share, pv_forecast_wh  # noqa: E402

SLOT = 900
PER_DAY = 96
H = SLOT / 3600
START = 1_778_457_600  # 2026-05-11 00:00 UTC, a Monday
ARRAY = PvArray(latitude=52.37, longitude=4.90, tilt_deg=35.0, azimuth_deg=180.0, kwp=5.0)
DAILY_WH = 9000.0
EXPORT = 40.0
EV_WH, EV_W, PLUG_H, LEAVE_H = 12_000.0, 7400.0, 18, 7
LIMIT_W = 17_000
PEAK_SAT_PER_KW = 10.0  # [planner] peak_sat_per_kw's default
SPEC = dict(capacity_wh=10_000.0, max_charge_w=5000.0, max_discharge_w=5000.0, min_soc_wh=1000.0,
            charge_efficiency=0.95, discharge_efficiency=0.95, degradation_sat_per_kwh=20.0)


NIGHT_TARIFF = 150.0


def tariff(t: int) -> float:
    hour = (t % 86_400) // 3600
    return NIGHT_TARIFF if hour < 7 else 400.0 if 17 <= hour < 21 else 250.0


def typical_wh(t: int) -> float:
    return DAILY_WH * TYPICAL_DAY[(t % 86_400) // 3600] * H


def ev_need(t: int, delivered: dict[int, float]) -> EvNeed | None:
    """The session plugged in at or next after `t` (weekdays Mon-Fri at
    18:00, leaving 07:00), with what it still needs."""
    for d in range(-1, 3):  # yesterday evening's session is still plugged in until 07:00
        day0 = (t // 86_400 + d) * 86_400
        plug, leave = day0 + PLUG_H * 3600, day0 + 86_400 + LEAVE_H * 3600
        if leave <= t or ((day0 - START) // 86_400) % 7 >= 5:
            continue
        return EvNeed(max(0.0, EV_WH - delivered.get(plug, 0.0)), leave, EV_W, plug if plug > t else None)
    return None


def one_plan_inputs(pv: list[float], soc: float = 3000.0) -> PlanInputs:
    slots = [START + i * SLOT for i in range(PER_DAY)]
    return PlanInputs(START, SLOT, [typical_wh(t) for t in slots], pv[:PER_DAY], [tariff(t) for t in slots],
                      [EXPORT] * PER_DAY, LIMIT_W, LIMIT_W, BatterySpec(soc_wh=soc, **SPEC),  # type: ignore[arg-type]
                      EvNeed(EV_WH, START + LEAVE_H * 3600, EV_W))


def whole_decision(runs: int, weeks: int = 4) -> tuple[float, float]:
    """Scheduler.decide as the coordinator runs it: the load from a store
    holding `weeks` weeks of two meters' readings every 15 min, the PV forecast,
    the LP, the orders and the journal row. (first call, median of the
    next `runs`, one interval apart: the load's past slots are then known)."""
    from microgrid.coordinator.market.settings import MarketSettings
    from microgrid.coordinator.planner.journal import Journal
    from microgrid.coordinator.planner.load import LoadForecaster, store_history
    from microgrid.coordinator.planner.scheduler import Scheduler
    from microgrid.coordinator.planner.settings import PlannerSettings
    from microgrid.coordinator.store.database import open_database
    from microgrid.coordinator.store.readings import ReadingStore

    store = ReadingStore(open_database(":memory:"))
    now = START + weeks * 7 * 86_400
    counters = {"load": 0, "pv": 0}
    for t in range(START, now + 1, SLOT):
        for meter in counters:
            store.insert_measurement(meter, meter, t, counters[meter], 0, None, None, {}, "bench")
            counters[meter] += int(typical_wh(t) / 2)
    market = MarketSettings(zone="bench", prices={"buy": 300, "sell": 60}).validate()
    planner = PlannerSettings(enabled=True, latitude=ARRAY.latitude, longitude=ARRAY.longitude, pv_kwp=ARRAY.kwp,
                              import_tariff={"time_of_day": {"00:00": 150, "07:00": 250, "17:00": 400,
                                                             "21:00": 250}}).validate()
    s = Scheduler(planner, market, LoadForecaster(store_history(store, lambda: list(counters)), weeks=weeks),
                  lambda: [], Journal(":memory:"))
    battery = BatterySpec(soc_wh=3000.0, **SPEC)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    s.decide(now - 30, battery, EvNeed(EV_WH, now + LEAVE_H * 3600, EV_W))
    cold = time.perf_counter() - t0
    times = []
    for k in range(1, runs + 1):
        t0 = time.perf_counter()
        s.decide(now - 30 + k * SLOT, battery, EvNeed(EV_WH, now + LEAVE_H * 3600, EV_W))
        times.append(time.perf_counter() - t0)
    return cold, statistics.median(times)


def timing(runs: int, weeks: int = 4) -> None:
    pv = pv_forecast_wh(ARRAY, START, SLOT, PER_DAY)
    inputs = one_plan_inputs(pv)
    solve(inputs)  # warm-up (imports, first solver instance)

    def measure(fn):  # type: ignore[no-untyped-def]
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times), statistics.median(times)

    lp_best, lp_med = measure(lambda: solve(inputs))
    whole_best, whole_med = measure(lambda: solve(one_plan_inputs(pv_forecast_wh(ARRAY, START, SLOT, PER_DAY))))
    g_best, g_med = measure(lambda: greedy_plan(inputs))
    cold, warm = whole_decision(runs, weeks)
    print(f"one 96-slot plan (battery, EV, PV, time-of-use), best / median of {runs}:")
    print(f"  LP (HiGHS)                     {lp_best * 1000:8.1f} ms / {lp_med * 1000:8.1f} ms")
    print(f"  pvlib forecast + LP            {whole_best * 1000:8.1f} ms / {whole_med * 1000:8.1f} ms"
          f"   (bar: <= 1000 ms: {'met' if whole_med <= 1.0 else 'NOT met'})")
    print(f"  a whole decision: {weeks} weeks of 2 meters' readings in SQLite -> load, pvlib, LP, orders, journal: "
          f"first {cold * 1000:.0f} ms, then median {warm * 1000:.0f} ms")
    print(f"  baseline: greedy rule-based    {g_best * 1000:8.3f} ms / {g_med * 1000:8.3f} ms")
    print(f"  LP / greedy (median)           {lp_med / g_med:8.0f} x")


@dataclass(frozen=True)
class Household:
    name: str
    kwp: float
    battery_wh: float  # 0: none
    ev: bool
    daily_wh: float


def zone(n: int, seed: int) -> list[Household]:
    """A feeder's households, varied: PV or not, battery or not, EV or not."""
    rnd = random.Random(seed * 7919 + n)
    out = []
    for i in range(n):
        out.append(Household(f"h{i + 1}", rnd.choice([0.0, 3.0, 5.0, 8.0]), rnd.choice([0.0, 5000.0, 10_000.0]),
                             rnd.random() < 0.5, rnd.uniform(6000, 14_000)))
    if n and not any(h.ev for h in out):
        out[0] = Household(out[0].name, out[0].kwp, out[0].battery_wh, True, out[0].daily_wh)
    return out


def spec_for(h: Household, soc: float) -> BatterySpec | None:
    if h.battery_wh <= 0:
        return None
    args = dict(SPEC) | {"capacity_wh": h.battery_wh, "min_soc_wh": 0.1 * h.battery_wh,
                         "max_charge_w": h.battery_wh / 2, "max_discharge_w": h.battery_wh / 2}
    return BatterySpec(soc_wh=soc, **args)  # type: ignore[arg-type]


def simulate_household(h: Household, days: int, seed: int, planned: bool, clear: list[float],
                       perfect: bool = False, trace: list[Any] | None = None) -> dict[str, Any]:
    """One household's `days`, slot by slot: its grid exchange per slot and
    its bill. The weather and the load are the same for both runs (seeded
    by the household), only the decisions differ. `trace` collects (slot,
    mode, charge, discharge, net, soc) per slot, for looking into a result."""
    rnd = random.Random(f"{seed}/{h.name}")
    n = days * PER_DAY
    scale = h.kwp / ARRAY.kwp
    forecast_pv = [0.8 * x * scale for x in clear]
    clouds = [rnd.uniform(0.3, 1.0) for _ in range(days + 1)]
    actual_pv = [clear[i] * scale * clouds[i // PER_DAY] * rnd.uniform(0.85, 1.0) for i in range(n)]
    typical = [typical_wh(START + i * SLOT) * h.daily_wh / DAILY_WH for i in range(n + PER_DAY)]
    actual_load = [typical[i] * rnd.uniform(0.7, 1.3) for i in range(n)]
    if perfect:  # the planner knows what will happen (to tell forecast errors from planning)
        forecast_pv = actual_pv + forecast_pv[n:]
        typical = actual_load + typical[n:]
    soc = 0.5 * h.battery_wh
    delivered: dict[int, float] = {}
    bill = short = solve_s = 0.0
    fallbacks = solves = follows = 0
    used = 0.0  # the house's load and the EV's energy
    net_series = []
    for i in range(n):
        t = START + i * SLOT
        spec = spec_for(h, soc)
        need = ev_need(t, delivered) if h.ev else None
        plugged = need is not None and need.available_from is None
        mode = SETPOINT
        if planned:
            # The PV nowcast from the last slot complete when the service
            # decides (30 s before this slot: the one before the last).
            seen = observed_share(actual_pv[i - 2], clear[i - 2] * scale, h.kwp, SLOT) \
                if i >= 2 and not perfect else None
            pv = nowcast([x * scale for x in clear[i:i + PER_DAY]], 0.8, seen, SLOT) if not perfect \
                else forecast_pv[i:i + PER_DAY]
            inputs = PlanInputs(t, SLOT, typical[i:i + PER_DAY], pv,
                                [tariff(t + k * SLOT) for k in range(PER_DAY)], [EXPORT] * PER_DAY, LIMIT_W, LIMIT_W,
                                spec, need if need is not None and need.energy_wh > 0 else None,
                                peak_sat_per_kw=PEAK_SAT_PER_KW)
            s0 = time.perf_counter()
            try:
                plan = solve(inputs)
                c, d, ev = plan.charge_wh[0], plan.discharge_wh[0], plan.ev_wh[0]
                mode = plan.battery_mode(0)
            except Exception:
                fallbacks += 1
                c = d = ev = 0.0
            solve_s += time.perf_counter() - s0
            solves += 1
            follows += mode == FOLLOW and spec is not None
            if spec is not None and mode == FOLLOW:  # the device's self-consumption, on what really happens
                c, d = greedy_step(spec, soc, actual_load[i] + (ev if plugged else 0.0), actual_pv[i], H)
            elif spec is not None:  # the battery follows the setpoint as far as its state allows
                c = min(c, max(0.0, spec.top_wh - soc) / spec.charge_efficiency)
                d = min(d, max(0.0, soc - spec.min_soc_wh) * spec.discharge_efficiency)
        else:
            ev = min(EV_W * H, need.energy_wh) if plugged and need is not None else 0.0
            c, d = greedy_step(spec, soc, actual_load[i] + ev, actual_pv[i], H) if spec is not None else (0.0, 0.0)
        if not plugged:
            ev = 0.0
        elif need is not None:
            ev = min(ev, need.energy_wh)
            session = need.deadline - 86_400 - LEAVE_H * 3600 + PLUG_H * 3600
            delivered[session] = delivered.get(session, 0.0) + ev
            if t + SLOT >= need.deadline:
                short += max(0.0, EV_WH - delivered[session])
        if spec is not None:
            soc += c * spec.charge_efficiency - d / spec.discharge_efficiency
            bill += d * spec.degradation_sat_per_kwh / 1000
        net = actual_load[i] + c + ev - d - actual_pv[i]
        bill += (max(net, 0.0) * tariff(t) - max(-net, 0.0) * EXPORT) / 1000
        net_series.append(net)
        used += actual_load[i] + ev
        if trace is not None:
            trace.append((i, planned and mode, round(c), round(d), round(net), round(soc)))
    # Energy left in the battery counts: what it holds beyond (or short of)
    # its start, at the cheapest price it could be bought for (the night tariff).
    bill -= (soc - 0.5 * h.battery_wh) * NIGHT_TARIFF / 1000
    return {"bill": bill, "net": net_series, "used": used, "short": short, "solve_s": solve_s, "solves": solves,
            "fallbacks": fallbacks, "follows": follows}


def simulate_zone(n_households: int, days: int, seed: int, perfect: bool = False) -> None:
    homes = zone(n_households, seed)
    n = days * PER_DAY
    clear = pv_forecast_wh(ARRAY, START, SLOT, n + PER_DAY)
    t0 = time.perf_counter()
    base = [simulate_household(h, days, seed, False, clear) for h in homes]
    lp = [simulate_household(h, days, seed, True, clear) for h in homes]
    wall = time.perf_counter() - t0
    known = [simulate_household(h, days, seed, True, clear, perfect=True) for h in homes] if perfect else []

    def totals(runs: list[dict[str, Any]]) -> tuple[float, float, float, float]:
        feeder = [sum(r["net"][i] for r in runs) for i in range(n)]
        imported = sum(max(x, 0.0) for x in feeder)
        return (sum(r["bill"] for r in runs), max(max(feeder), 0.0) / H, sum(r["short"] for r in runs),
                1 - imported / sum(r["used"] for r in runs))

    b_bill, b_peak, b_short, b_self = totals(base)
    p_bill, p_peak, p_short, p_self = totals(lp)
    solves = sum(r["solves"] for r in lp)
    print(f"\nsample zone: {len(homes)} households x {days} days x {PER_DAY} slots, seed {seed} (rolling horizon: "
          f"{solves} plans, {sum(r['solve_s'] for r in lp) / max(solves, 1) * 1000:.1f} ms each; {wall:.0f} s in all)")
    for h, b, p in zip(homes, base, lp):
        kit = ", ".join(x for x in (f"{h.kwp:g} kWp" if h.kwp else "", f"{h.battery_wh / 1000:g} kWh battery"
                                    if h.battery_wh else "", "EV" if h.ev else "") if x) or "load only"
        print(f"  {h.name:4s} {kit:32s} bill {b['bill']:8.0f} -> {p['bill']:8.0f} sat")
    print(f"  {'':28s} {'bill+wear (sat)':>15s} {'feeder peak import (W)':>23s} {'EV short (Wh)':>14s} "
          f"{'self-sufficiency':>17s}")
    print(f"  {'baseline: rule-based':28s} {b_bill:15.0f} {b_peak:23.0f} {b_short:14.0f} {b_self:17.1%}")
    print(f"  {'planner (LP, forecasts)':28s} {p_bill:15.0f} {p_peak:23.0f} {p_short:14.0f} {p_self:17.1%}")
    if known:
        k_bill, k_peak, k_short, k_self = totals(known)
        print(f"  {'planner, perfect forecasts':28s} {k_bill:15.0f} {k_peak:23.0f} {k_short:14.0f} {k_self:17.1%}")
    print(f"  planner / baseline: bill {p_bill / b_bill:.3f} (saves {b_bill - p_bill:.0f} sat, "
          f"{(1 - p_bill / b_bill) * 100:.1f} %), feeder peak import {p_peak / b_peak:.3f}; "
          f"fallbacks {sum(r['fallbacks'] for r in lp)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--households", type=int, default=6)
    ap.add_argument("--perfect", action="store_true", help="also plan knowing the future")
    ap.add_argument("--history-weeks", type=int, default=4, help="stored readings for the whole decision's load")
    a = ap.parse_args(argv)
    timing(a.runs, a.history_weeks)
    simulate_zone(a.households, a.days, a.seed, a.perfect)
    return 0


if __name__ == "__main__":
    sys.exit(main())
