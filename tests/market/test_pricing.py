"""Users' prices: rules, config parsing, planning orders from a forecast."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgrid.coordinator.market.orders import BUY, SELL, decode_order
from microgrid.coordinator.market.pricing import (
    Battery, FixedPrice, Forecast, OrderPlan, PricingError, PricingPolicy, TimeOfDayPrice, parse_policy,
    parse_rule, plan_interval, price_at, sign_plans,
)

from .helpers import CREATED, EXPIRES, KEYS, START

MIDNIGHT = 1_700_006_400  # a UTC midnight


def test_time_of_day_curve_steps_and_wraps_round_midnight() -> None:
    rule = parse_rule("sell", {"time_of_day": {"07:00": 150, "17:00": 250, "22:30": 90}})
    assert isinstance(rule, TimeOfDayPrice)
    at = lambda hh, mm: price_at(rule, MIDNIGHT + hh * 3600 + mm * 60)  # noqa: E731
    assert (at(0, 0), at(6, 59), at(7, 0), at(16, 59), at(17, 0), at(22, 29), at(22, 30), at(23, 59)) == \
        (90, 90, 150, 150, 250, 250, 90, 90)


def test_time_of_day_uses_the_local_offset() -> None:
    rule = TimeOfDayPrice(((0, 10), (12 * 60, 20)))
    assert price_at(rule, MIDNIGHT + 11 * 3600) == 10
    assert price_at(rule, MIDNIGHT + 11 * 3600, utc_offset_s=3600) == 20


def test_fixed_price_is_the_same_all_day() -> None:
    assert {price_at(parse_rule("buy", 120), MIDNIGHT + h * 3600) for h in range(24)} == {120}  # type: ignore[arg-type]
    assert parse_rule("buy", {"fixed": 7}) == FixedPrice(7)


@pytest.mark.parametrize("value,match", [
    (-1, "expected an integer sat/kWh"), (1.5, "expected a price"), ({"time_of_day": {"25:00": 1}}, "HH:MM"),
    ({"time_of_day": {}}, "at least one step"), ({"time_of_day": {"07:00": "cheap"}}, "07:00"), (True, "expected"),
])
def test_bad_price_rules_are_refused_with_the_field_and_expectation(value: object, match: str) -> None:
    with pytest.raises(PricingError, match=match):
        parse_rule("sell", value)


def test_policy_from_config_table() -> None:
    p = parse_policy({"sell": {"time_of_day": {"00:00": 80, "17:00": 200}}, "buy": 150, "reserve_wh": 2000,
                      "sell_floor_sat_per_kwh": 100})
    assert p.buy == FixedPrice(150) and p.reserve_wh == 2000 and p.sell_floor_sat_per_kwh == 100
    with pytest.raises(PricingError, match="reserve"):
        parse_policy({"reserve_wh": -5})
    with pytest.raises(PricingError, match="expected some of"):
        parse_policy({"sel": 5})
    with pytest.raises(PricingError, match="sell_from_battery"):
        parse_policy({"sell_from_battery": "yes"})


def test_surplus_above_the_reserve_sells_at_no_less_than_the_floor() -> None:
    policy = PricingPolicy(sell=FixedPrice(60), buy=FixedPrice(150), reserve_wh=2000, sell_floor_sat_per_kwh=100)
    bat = Battery(stored_wh=1500, capacity_wh=5000, max_charge_wh=800, max_discharge_wh=800)
    # 1200 Wh surplus: 500 Wh tops the battery up to the reserve, 700 Wh for sale at the floor.
    assert plan_interval(policy, Forecast(START, 1500, 300), bat) == [OrderPlan(SELL, 700, 100)]


def test_stored_energy_above_the_reserve_is_offered_within_the_discharge_rate() -> None:
    policy = PricingPolicy(sell=FixedPrice(120), reserve_wh=2000)
    bat = Battery(stored_wh=4000, capacity_wh=5000, max_charge_wh=800, max_discharge_wh=800)
    assert plan_interval(policy, Forecast(START, 300, 100), bat) == [OrderPlan(SELL, 200 + 800, 120)]
    keep = PricingPolicy(sell=FixedPrice(120), reserve_wh=2000, sell_from_battery=False)
    assert plan_interval(keep, Forecast(START, 300, 100), bat) == [OrderPlan(SELL, 200, 120)]


def test_deficit_is_covered_from_storage_first_then_bought() -> None:
    policy = PricingPolicy(sell=FixedPrice(120), buy=FixedPrice(150), reserve_wh=2000)
    bat = Battery(stored_wh=2300, capacity_wh=5000, max_charge_wh=800, max_discharge_wh=800)
    assert plan_interval(policy, Forecast(START, 0, 1000), bat) == [OrderPlan(BUY, 700, 150)]
    assert plan_interval(policy, Forecast(START, 0, 1000)) == [OrderPlan(BUY, 1000, 150)]


def test_no_rule_for_a_side_places_no_order_on_it_and_tiny_orders_are_skipped() -> None:
    assert plan_interval(PricingPolicy(buy=FixedPrice(1)), Forecast(START, 900, 100)) == []
    assert plan_interval(PricingPolicy(sell=FixedPrice(1)), Forecast(START, 100, 900)) == []
    assert plan_interval(PricingPolicy(sell=FixedPrice(1), min_order_wh=50), Forecast(START, 140, 100)) == []


@given(st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 6000), st.integers(0, 3000), st.integers(0, 1000))
@settings(max_examples=300, deadline=None)
def test_plans_never_sell_into_the_reserve_nor_buy_what_storage_covers(gen: int, cons: int, stored: int,
                                                                     reserve: int, rate: int) -> None:
    policy = PricingPolicy(sell=FixedPrice(100), buy=FixedPrice(100), reserve_wh=reserve)
    bat = Battery(stored, 6000, rate, rate)
    plans = {p.side: p.quantity_wh for p in plan_interval(policy, Forecast(START, gen, cons), bat)}
    assert len(plans) <= 1
    sell, buy = plans.get(SELL, 0), plans.get(BUY, 0)
    # Energy sold comes from the surplus or from storage above the reserve only.
    assert sell <= max(0, gen - cons) + min(max(0, stored - reserve), rate)
    assert buy == max(0, cons - gen - min(max(0, stored - reserve), rate))


def test_plans_sign_into_valid_orders_with_consecutive_nonces() -> None:
    plans = [OrderPlan(SELL, 700, 100), OrderPlan(BUY, 5, 90)]
    signed = sign_plans(plans, KEYS[4], "zone-a", START, CREATED, EXPIRES, first_nonce=40)
    assert [decode_order(s.encoded).order.nonce for s in signed] == [40, 41]
    assert signed[0].order.quantity_wh == 700 and signed[1].side == BUY


# -- the [market] config section ------------------------------------------------------

from microgrid.coordinator.market.settings import MarketSettings, MarketSettingsError  # noqa: E402


def test_market_settings_give_zone_rules_tariff_and_policy() -> None:
    s = MarketSettings(enabled=True, zone="elm-street", feeder_capacity_w=20_000, grid_fee_sat_per_kwh=5,
                       pricing="pay-as-bid", prices={"sell": 90, "reserve_wh": 1000}).validate()
    assert s.rules().capacity_wh == 5000 and s.rules().pricing == "pay-as-bid"
    assert s.tariff().import_sat_per_kwh == 250
    assert s.policy().sell == FixedPrice(90) and s.policy().reserve_wh == 1000
    assert MarketSettings().validate().rules().capacity_wh is None


@pytest.mark.parametrize("kw,match", [
    ({"enabled": True}, "market.zone=''"), ({"interval_s": 600}, "interval_s"),
    ({"gate_lead_s": 4000}, "order_lead_s"), ({"pricing": "dutch"}, "pricing"),
    ({"grid_fee_sat_per_kwh": -1}, "grid_fee"), ({"import_tariff_sat_per_kwh": "x"}, "import_sat_per_kwh"),
    ({"prices": {"sell": -5}}, "market.prices: sell=-5"), ({"operator": ""}, "operator"),
])
def test_bad_market_settings_name_the_key_and_the_expectation(kw: dict, match: str) -> None:
    with pytest.raises(MarketSettingsError, match=match):
        MarketSettings(**kw).validate()
