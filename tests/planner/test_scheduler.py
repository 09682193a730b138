"""The planner's conductor: one decision per interval, its orders within the
household's rules, the safe fallback, the journal, and the [planner]
configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from microgrid.coordinator.config import ConfigError, from_dict
from microgrid.coordinator.market.orders import BUY, SELL
from microgrid.coordinator.market.pricing import plan_interval
from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.planner.journal import Journal
from microgrid.coordinator.planner.load import LoadForecaster
from microgrid.coordinator.planner.lp import solve
from microgrid.coordinator.planner.model import BatterySpec, EvNeed, PlanInputs
from microgrid.coordinator.planner.orders import plan_orders
from microgrid.coordinator.planner.scheduler import FALLBACK, OPTIMAL, Scheduler
from microgrid.coordinator.planner.settings import PlannerSettings

MIDNIGHT = 1_781_481_600  # 2026-06-15 00:00 UTC
TOU = {"time_of_day": {"00:00": 100, "06:00": 250, "17:00": 400, "21:00": 250}}


def market(**prices: object) -> MarketSettings:
    return MarketSettings(zone="elm", interval_s=900, order_lead_s=3600, gate_lead_s=300, grid_fee_sat_per_kwh=5,
                          import_tariff_sat_per_kwh=250, export_tariff_sat_per_kwh=40,
                          prices=prices or {"buy": 300, "sell": 60, "sell_floor_sat_per_kwh": 50}).validate()


def planner(**kw: object) -> PlannerSettings:
    args: dict[str, object] = dict(enabled=True, latitude=52.37, longitude=4.9, pv_kwp=5.0, pv_tilt_deg=35.0,
                                   import_tariff=TOU, import_limit_w=11_000, export_limit_w=11_000)
    args.update(kw)
    return PlannerSettings(**args).validate()  # type: ignore[arg-type]


def scheduler(tmp_path: Path, history: list[tuple[int, int | None]] | None = None, **kw: object) -> Scheduler:
    load = LoadForecaster(lambda a, b: 150.0)  # 600 W all day
    return Scheduler(planner(**kw), market(), load, lambda: history or [], Journal(tmp_path / "planner.db"))


def battery(soc: float = 1000.0) -> BatterySpec:
    return BatterySpec(capacity_wh=10_000, soc_wh=soc, min_soc_wh=1000, max_charge_w=5000, max_discharge_w=5000,
                       degradation_sat_per_kwh=20)


def test_a_decision_sets_the_battery_now_and_orders_for_the_interval_an_hour_ahead(tmp_path: Path) -> None:
    s = scheduler(tmp_path, pv_kwp=0.0)  # no sun to fill the battery for free
    now = MIDNIGHT + 1 * 3600 + 120  # 01:02, cheap night
    d = s.decide(now, battery(), None)
    assert d.status == OPTIMAL and d.reason == ""
    assert d.slot_start == MIDNIGHT + 3600 + 900  # the next boundary
    assert d.order_start == MIDNIGHT + 2 * 3600 + 900  # ceil((now + order lead) / 900)
    sched = d.battery_schedule_w()
    assert len(sched) == 96 and d.battery_w == sched[0]
    # Charging in the cheap night (any of its slots costs the same) for the evening peak.
    night = sched[:(6 * 3600 - (d.slot_start - MIDNIGHT)) // 900]
    peak = sched[(17 * 3600 - (d.slot_start - MIDNIGHT)) // 900:(21 * 3600 - (d.slot_start - MIDNIGHT)) // 900]
    assert sum(night) > 0 and min(night) >= 0 and max(peak) < 0
    # At night the house imports (600 W load plus charging): one buy order,
    # its limit the household's 300 capped at the 100 tariff then.
    assert [(o.side, o.limit_sat_per_kwh) for o in d.orders] == [(BUY, 100)]
    assert d.plan is not None
    k = (d.order_start - d.slot_start) // 900
    assert d.orders[0].quantity_wh == pytest.approx(d.plan.import_wh[k], abs=1)
    # Kept with its reasons before it is acted on.
    [e] = s.journal.recent(with_schedule=True)  # type: ignore[union-attr]
    assert (e.status, e.slot_start, e.order_start, e.inputs_digest) == (OPTIMAL, d.slot_start, d.order_start,
                                                                         d.inputs_digest)
    assert e.battery_w == pytest.approx(d.battery_w) and e.objective_sat == pytest.approx(d.plan.objective_sat)
    assert e.orders == [{"side": BUY, "quantity_wh": d.orders[0].quantity_wh, "limit_sat_per_kwh": 100}]
    assert e.why["slot"]["buy_sat_per_kwh"] == 100 and e.why["soc_wh"] == 1000
    assert e.schedule is not None and len(e.schedule["soc_wh"]) == 96


def test_midday_surplus_is_offered_at_the_households_price_never_below_export_tariff(tmp_path: Path) -> None:
    s = scheduler(tmp_path, pv_kwp=10.0)
    d = s.decide(MIDNIGHT + 10 * 3600, battery(soc=10_000), None)  # full battery, sunny noon ahead
    assert d.status == OPTIMAL
    sells = [o for o in d.orders if o.side == SELL]
    assert len(sells) == 1 and sells[0].limit_sat_per_kwh == 60  # max(rule 60, floor 50, tariff 40)


def test_same_facts_give_the_same_digest_and_other_facts_another(tmp_path: Path) -> None:
    s = scheduler(tmp_path)
    a = s.decide(MIDNIGHT, battery(), None)
    b = s.decide(MIDNIGHT, battery(), None)
    c = s.decide(MIDNIGHT, battery(soc=2000), None)
    assert a.inputs_digest == b.inputs_digest != c.inputs_digest
    assert s.journal is not None and s.journal.count() == 3


def test_infeasible_inputs_fall_back_to_an_idle_battery_and_todays_rule_based_orders(tmp_path: Path) -> None:
    s = scheduler(tmp_path)
    now = MIDNIGHT + 3600
    ev = EvNeed(energy_wh=80_000, deadline=now + 2 * 3600, max_power_w=11_000)
    d = s.decide(now, battery(soc=5000), ev)
    assert d.status == FALLBACK and "EV needs 80000 Wh" in d.reason
    assert d.battery_w == 0 and d.ev_w is None and d.plan is None
    assert d.battery_schedule_w() == []
    # The orders today's pricing places for the forecast (150 Wh load, no sun at night).
    assert [(o.side, o.quantity_wh) for o in d.orders] == [(BUY, 150)]
    [e] = s.journal.recent()  # type: ignore[union-attr]
    assert e.status == FALLBACK and "EV needs" in e.reason and e.objective_sat is None and e.battery_w == 0


def test_expected_market_price_below_the_tariff_is_planned_with(tmp_path: Path) -> None:
    start = MIDNIGHT + 3600
    history = [(start - day * 86_400 + i * 900, 180) for day in range(1, 4) for i in range(96)]
    s = scheduler(tmp_path, history=history)
    d = s.decide(start, None, None)
    assert d.plan is not None
    # 17:00: peak tariff 400, market 180 + fee 5, within the buy rule (300).
    k = (MIDNIGHT + 17 * 3600 - d.slot_start) // 900
    assert d.plan.inputs.buy_sat_per_kwh[k] == 185
    assert d.plan.inputs.price_source[k] == "market+market"


def test_the_market_takes_the_plans_quantities_through_its_own_forecaster(tmp_path: Path) -> None:
    s = scheduler(tmp_path)
    d = s.decide(MIDNIGHT + 3600, battery(), None)
    fc = s.market_forecast(d.order_start)
    assert fc is not None and s.market_forecast(d.order_start + 900) is None
    plans = plan_interval(market().policy(), fc[0], fc[1])
    assert [(o.side, o.quantity_wh) for o in plans] == [(o.side, o.quantity_wh) for o in d.orders]


def test_orders_respect_the_rules_sides_and_minimum() -> None:
    inputs = PlanInputs(0, 900, [0.0, 400.0], [500.0, 0.0], [300.0, 300.0], [40.0, 40.0], 10_000, 10_000)
    plan = solve(inputs)
    only_sell = market(sell=70).policy()
    assert [(o.side, o.quantity_wh, o.limit_sat_per_kwh) for o in plan_orders(plan, 0, only_sell, 300, 40)] == \
        [(SELL, 500, 70)]
    assert plan_orders(plan, 1, only_sell, 300, 40) == []  # no buy rule: no buy order
    high_min = market(buy=500, min_order_wh=1000).policy()
    assert plan_orders(plan, 1, high_min, 300, 40) == []  # 400 Wh is below the household's minimum
    buys = plan_orders(plan, 1, market(buy=500).policy(), 300, 40)
    assert [(o.side, o.quantity_wh, o.limit_sat_per_kwh) for o in buys] == [(BUY, 400, 300)]


def test_planner_section_is_off_by_default_and_checked() -> None:
    assert from_dict({}).planner.enabled is False
    cfg = from_dict({"planner": {"enabled": True, "latitude": 52, "longitude": 5, "pv_kwp": 4,
                                 "import_tariff": TOU}})
    assert cfg.planner.latitude == 52.0 and cfg.planner.pv_array().kwp == 4.0
    with pytest.raises(ConfigError, match=r"planner.pv_sky_share=1.5: expected a number in 0..1"):
        from_dict({"planner": {"pv_sky_share": 1.5}})
    with pytest.raises(ConfigError, match=r"planner.latitude and planner.longitude: expected the PV array's site"):
        from_dict({"planner": {"enabled": True, "pv_kwp": 4}})
    with pytest.raises(ConfigError, match=r"planner.import_tariff.time_of_day key '25:00'"):
        from_dict({"planner": {"import_tariff": {"time_of_day": {"25:00": 1}}}})
    with pytest.raises(ConfigError, match=r"planner.horizon: unknown setting"):
        from_dict({"planner": {"horizon": 24}})


def test_the_households_reserve_is_the_plans_floor_for_the_battery(tmp_path: Path) -> None:
    s = Scheduler(planner(pv_kwp=0.0), market(buy=300, reserve_wh=6000), LoadForecaster(lambda a, b: 300.0),
                  lambda: [], Journal(tmp_path / "p.db"))
    d = s.decide(MIDNIGHT + 16 * 3600, battery(soc=8000), None)  # the evening peak ahead
    assert d.plan is not None and d.plan.inputs.battery is not None
    assert d.plan.inputs.battery.min_soc_wh == 6000
    assert min(d.plan.soc_wh) >= 6000 - 1e-6
    assert sum(d.plan.discharge_wh) > 0  # what is above the reserve still serves the peak
