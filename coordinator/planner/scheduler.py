"""The planner's conductor: once per market interval, forecasts in, one
decision out, kept in the journal before anyone acts on it.

`decide(now, battery, ev)` (time and device states passed in):
1. The horizon: `horizon_h` of market intervals from the next interval
   boundary (slot 0, whose setpoints are applied when it starts).
2. Forecasts: PV (pv.py; with a PV meter, the next hours lean on the
   clouds it just measured), load (load.py), tariffs and the expected market
   price combined with the household's rules (prices.py).
3. The LP (lp.py); the battery's setpoint for slot 0 and whether the
   device's own self-consumption does the same (Plan.battery_mode: then it
   is left to follow the real load and PV). Infeasible inputs or a solver failure give the safe
   fallback instead: battery idle (0 W), the EV charger left to its own
   default (None), and the orders today's rule-based pricing would place
   (market/pricing.py plan_interval, without the battery).
4. Orders for the interval the market takes orders for now (the one
   `order_lead_s` ahead, as MarketService.next_interval) from the plan's
   grid exchange in that slot (orders.py).
5. The journal row (journal.py), then the decision is returned.

`market_forecast(interval_start)` hands the latest decision's orders to
today's MarketService as a (Forecast, None) pair that its plan_interval
turns into the same quantities, so the market takes the plan's orders
without a change to market/ (the price limits are then the household's
rule prices; orders.py's tighter ones need MarketService to accept plans).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from ..market.pricing import Battery, Forecast, OrderPlan, plan_interval
from ..market.settings import MarketSettings
from .journal import Entry, Journal
from .load import LoadForecaster, SlotHistory
from .lp import solve
from .model import SETPOINT, BatterySpec, EvNeed, Plan, PlanInfeasible, PlanInputError, PlanInputs
from .orders import plan_orders
from .prices import expected_market_prices, rule_series, slot_prices
from .pv import nowcast, observed_share, pv_forecast_wh
from .settings import PlannerSettings

log = logging.getLogger("microgrid.planner")

OPTIMAL = "optimal"
FALLBACK = "fallback"
DAY_S = 86_400

# Past intervals' (start, clearing price or None), newest last or in any order.
PriceHistory = Callable[[], Iterable[tuple[int, int | None]]]


@dataclass(frozen=True)
class Decision:
    decided_at: int
    slot_start: int  # the setpoints are for [slot_start, slot_start + interval)
    order_start: int  # the orders are for this interval
    status: str  # OPTIMAL or FALLBACK
    reason: str  # why the fallback ("" when optimal)
    battery_w: float  # + charge, - discharge; 0 idle
    battery_mode: str  # SETPOINT: command battery_w; FOLLOW: the device's own self-consumption (Plan.battery_mode)
    ev_w: float | None  # None: leave the charger to its default (no EV need known, or the fallback)
    orders: list[OrderPlan]
    inputs_digest: str
    plan: Plan | None

    def battery_schedule_w(self) -> list[float]:
        """The plan's battery setpoints, slot by slot (empty for a fallback)."""
        p = self.plan
        return [] if p is None else [p.battery_setpoint_w(t) for t in range(p.inputs.slots)]

    def ev_schedule_w(self) -> list[float]:
        p = self.plan
        return [] if p is None else [p.ev_power_w(t) for t in range(p.inputs.slots)]


class Scheduler:
    def __init__(self, settings: PlannerSettings, market: MarketSettings, load: LoadForecaster,
                 price_history: PriceHistory, journal: Journal | None = None,
                 pv_observed: SlotHistory | None = None) -> None:
        """`pv_observed(start, end)`: the array's measured output over a past
        slot (its own meter), for the nowcast; None: no PV meter."""
        self.settings = settings
        self.pv_observed = pv_observed
        self.market = market
        self.load = load
        self.price_history = price_history
        self.journal = journal
        self.import_rule = settings.tariff_rule("import", market.import_tariff_sat_per_kwh)
        self.export_rule = settings.tariff_rule("export", market.export_tariff_sat_per_kwh)
        self.array = settings.pv_array()
        self.latest: Decision | None = None
        self._pruned_day = -1
        # The energy company's price events (energy_company/events.py): the
        # import tariff per slot -> the price to plan with; None: the tariff.
        self.import_adjust: Callable[[Sequence[float], int, int], list[float]] | None = None

    def horizon(self, now: int) -> tuple[int, int, int]:
        """(slot 0's start, slots, the interval orders are placed for)."""
        step = self.market.interval_s
        slot0 = int(math.ceil(now / step)) * step
        order_start = int(math.ceil((now + self.market.order_lead_s) / step)) * step
        return slot0, self.settings.horizon_h * 3600 // step, order_start

    def inputs(self, now: int, battery: BatterySpec | None, ev: EvNeed | None) -> PlanInputs:
        slot0, slots, _ = self.horizon(now)
        step = self.market.interval_s
        off = self.market.utc_offset_s
        pv = self.pv_forecast(now, slot0, step, slots)
        load, _how = self.load.forecast(now, slot0, step, slots)
        imp: Sequence[float] = rule_series(self.import_rule, slot0, step, slots, off)
        if self.import_adjust is not None:
            imp = self.import_adjust(imp, slot0, step)
        exp = rule_series(self.export_rule, slot0, step, slots, off)
        expected = expected_market_prices(self.price_history(), slot0, step, slots, self.settings.price_history_days)
        prices = slot_prices(slot0, step, imp, exp, expected, self.market.policy(), self.market.grid_fee_sat_per_kwh,
                             off)
        return PlanInputs(start=slot0, slot_s=step, load_wh=load, pv_wh=pv, buy_sat_per_kwh=prices.buy,
                          sell_sat_per_kwh=prices.sell, import_limit_w=self.settings.import_limit_w,
                          export_limit_w=self.settings.export_limit_w, battery=battery, ev=ev,
                          price_source=prices.source, peak_sat_per_kw=self.settings.peak_sat_per_kw)

    def pv_forecast(self, now: int, slot0: int, step: int, slots: int) -> list[float]:
        """Clear sky x the usual share, the first hours leaning on the share
        of clear sky the last complete slot gave (pv.nowcast)."""
        clear_array = dataclasses.replace(self.array, sky_share=1.0)
        clear = pv_forecast_wh(clear_array, slot0, step, slots)
        seen = None
        if self.pv_observed is not None and self.array.kwp > 0:
            last = now // step * step - step  # the last slot over by now
            try:
                observed = self.pv_observed(last, last + step)
            except Exception as e:  # a store problem: plan without the nowcast
                log.warning("PV meter not read for the nowcast: %s", e)
                observed = None
            seen = observed_share(observed, pv_forecast_wh(clear_array, last, step, 1)[0], self.array.kwp, step)
        return nowcast(clear, self.array.sky_share, seen, step)

    def decide(self, now: int, battery: BatterySpec | None = None, ev: EvNeed | None = None) -> Decision:
        now = int(now)
        slot0, slots, order_start = self.horizon(now)
        k = (order_start - slot0) // self.market.interval_s
        policy = self.market.policy()
        if battery is not None and policy.reserve_wh > battery.min_soc_wh:
            # The household's reserve ([market.prices] reserve_wh) is the plan's floor.
            battery = dataclasses.replace(battery, min_soc_wh=min(float(policy.reserve_wh), battery.top_wh))
        inputs = self.inputs(now, battery, ev)
        off = self.market.utc_offset_s
        plan: Plan | None = None
        reason = ""
        try:
            plan = solve(inputs, self.settings.solve_time_limit_s)
        except (PlanInfeasible, PlanInputError) as e:
            reason = str(e)
        except Exception as e:  # the solver itself failed: never leave the house without a decision
            log.exception("the planner's solver failed")
            reason = f"solver error: {e!r}"
        if plan is not None:
            orders = plan_orders(plan, k, policy, inputs.buy_sat_per_kwh[k], inputs.sell_sat_per_kwh[k], off) \
                if k < slots else []
            # No EV need known: the charger is left alone (a 0 W limit would pause a car plugged in).
            decision = Decision(now, slot0, order_start, OPTIMAL, "", plan.battery_setpoint_w(0),
                                plan.battery_mode(0), plan.ev_power_w(0) if ev is not None else None, orders,
                                inputs.digest(), plan)
        else:
            log.warning("planner fallback for %d (battery idle, rule-based orders): %s", slot0, reason)
            fc = Forecast(order_start, int(inputs.pv_wh[k]) if k < slots else 0,
                          int(math.ceil(inputs.load_wh[k])) if k < slots else 0)
            decision = Decision(now, slot0, order_start, FALLBACK, reason, 0.0, SETPOINT, None,
                                plan_interval(policy, fc, None, off), inputs.digest(), None)
        if self.journal is not None:
            self.journal.record(self._entry(decision, inputs, k))
            day = now // DAY_S
            if day != self._pruned_day:
                self._pruned_day = day
                self.journal.prune(now - self.settings.keep_days * DAY_S)
        self.latest = decision
        return decision

    def _entry(self, d: Decision, inputs: PlanInputs, k: int) -> Entry:
        b = inputs.battery
        why = {
            "slot": {"load_wh": round(inputs.load_wh[0], 1), "pv_wh": round(inputs.pv_wh[0], 1),
                     "buy_sat_per_kwh": inputs.buy_sat_per_kwh[0], "sell_sat_per_kwh": inputs.sell_sat_per_kwh[0],
                     "prices_from": inputs.price_source[0] if inputs.price_source else ""},
            "order_slot": k,
            "battery_mode": d.battery_mode,
            "soc_wh": None if b is None else round(b.soc_wh, 1),
            "ev_need_wh": None if inputs.ev is None else inputs.ev.energy_wh,
            "ev_deadline": None if inputs.ev is None else inputs.ev.deadline,
            "horizon": {"start": inputs.start, "slots": inputs.slots, "slot_s": inputs.slot_s},
        }
        schedule = None
        p = d.plan
        if p is not None:
            why["soc_end_wh"] = round(p.soc_wh[-1], 1)

            def r(xs: list[float]) -> list[float]:
                return [round(x, 1) for x in xs]
            schedule = {"import_wh": r(p.import_wh), "export_wh": r(p.export_wh), "charge_wh": r(p.charge_wh),
                        "discharge_wh": r(p.discharge_wh), "ev_wh": r(p.ev_wh), "soc_wh": r(p.soc_wh),
                        "load_wh": r(list(inputs.load_wh)), "pv_wh": r(list(inputs.pv_wh)),
                        "buy_sat_per_kwh": list(inputs.buy_sat_per_kwh),
                        "sell_sat_per_kwh": list(inputs.sell_sat_per_kwh)}
        return Entry(d.decided_at, d.slot_start, d.order_start, d.status, d.reason, d.inputs_digest,
                     None if p is None else p.objective_sat, d.battery_w, d.ev_w,
                     [{"side": o.side, "quantity_wh": o.quantity_wh, "limit_sat_per_kwh": o.limit_sat_per_kwh}
                      for o in d.orders], why, schedule)

    def market_forecast(self, interval_start: int) -> tuple[Forecast, Battery | None] | None:
        """The latest decision's orders for `interval_start` as what
        MarketService's forecaster returns (see the module docstring);
        None when the latest decision is for another interval."""
        d = self.latest
        if d is None or d.order_start != interval_start:
            return None
        sell = sum(o.quantity_wh for o in d.orders if o.side == "sell")
        buy = sum(o.quantity_wh for o in d.orders if o.side == "buy")
        return Forecast(interval_start, sell, buy), None
