"""Load from the household's stored readings (same weekday and time, then
same time, then a typical day) and expected prices (tariff, market, rules)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microgrid.coordinator.market.pricing import FixedPrice, PricingPolicy, TimeOfDayPrice, parse_rule
from microgrid.coordinator.planner.load import TYPICAL_DAY, LoadForecaster, store_history
from microgrid.coordinator.planner.model import PlanInputError
from microgrid.coordinator.planner.prices import expected_market_prices, rule_series, slot_prices
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore

DAY = 86_400
WEEK = 7 * DAY
MONDAY = 1_781_481_600  # 2026-06-15 00:00 UTC, a Monday
SLOT = 900


def wh_in(t: int) -> int:
    """The recorded household's consumption in the slot starting at t: 100
    Wh, 300 Wh 18:00-19:00, and 50 Wh more on Saturdays."""
    hour = (t % DAY) // 3600
    weekday = ((t - MONDAY) // DAY) % 7
    return (300 if hour == 18 else 100) + (50 if weekday == 5 else 0)


def store_with_history(days: int, end: int, missing: set[int] = frozenset()) -> ReadingStore:  # type: ignore[assignment]
    """One meter reading at every slot boundary for `days` days before `end`,
    its import counter advancing by wh_in(slot)."""
    store = ReadingStore(open_database(":memory:"))
    counter = 0
    for t in range(end - days * DAY, end + 1, SLOT):
        if t not in missing:
            store.insert_measurement("m1", "house", t, counter, 0, None, None, {}, "test")
        counter += wh_in(t)
    return store


def test_forecast_is_the_same_weekday_and_time_of_recent_weeks() -> None:
    now = MONDAY + 3 * WEEK
    store = store_with_history(21, now)
    f = LoadForecaster(store_history(store, lambda: ["m1"]), weeks=3)
    start = now
    wh, how = f.forecast(now, start, SLOT, 7 * 96)
    assert how == ["week"] * (7 * 96)
    assert wh == [wh_in(start + i * SLOT) for i in range(7 * 96)]
    assert wh[5 * 96 + 18 * 4] == 350  # Saturday 18:00


def test_a_slot_later_than_a_week_ahead_uses_the_newest_week_that_is_over() -> None:
    now = MONDAY + 2 * WEEK + 12 * 3600
    f = LoadForecaster(store_with_history_fn(now), weeks=2)
    wh, how = f.forecast(now, now + 8 * DAY, SLOT, 4)
    assert how == ["week"] * 4 and wh == [wh_in(now + 8 * DAY + i * SLOT) for i in range(4)]


def store_with_history_fn(now: int):  # type: ignore[no-untyped-def]
    return store_history(store_with_history(14, now), lambda: ["m1"])


def test_a_few_days_of_history_give_the_same_time_of_day_and_none_the_typical_day() -> None:
    now = MONDAY + 3 * DAY  # Thursday: three days recorded, no week yet
    store = store_with_history(3, now)
    f = LoadForecaster(store_history(store, lambda: ["m1"]), weeks=4, fallback_daily_wh=9600)
    wh, how = f.forecast(now, now, SLOT, 96)
    assert how == ["day"] * 96
    assert wh[18 * 4] == 300 and wh[0] == 100
    empty = LoadForecaster(store_history(ReadingStore(open_database(":memory:")), lambda: ["m1"]),
                           fallback_daily_wh=9600)
    wh, how = empty.forecast(now, now, SLOT, 96)
    assert how == ["typical"] * 96
    assert sum(wh) == pytest.approx(9600)
    assert wh[19 * 4] == pytest.approx(9600 * TYPICAL_DAY[19] / 4)  # the evening peak


def test_slots_with_missing_readings_are_left_out_not_counted_as_zero() -> None:
    now = MONDAY + 2 * WEEK
    target = now + 18 * 3600  # Monday 18:00
    # The meter's first reading came at the end of the Monday 18:00 slot two weeks ago:
    # that slot is incomplete (no reading at its start), not 0 Wh.
    early = {t for t in range(now - 14 * DAY, target - WEEK - WEEK + 1, SLOT)}
    store = store_with_history(14, now, missing=early)
    f = LoadForecaster(store_history(store, lambda: ["m1"]), weeks=2)
    wh, how = f.forecast(now, target, SLOT, 1)
    assert how == ["week"] and wh == [300]  # from last week alone
    no_meters = LoadForecaster(store_history(store, lambda: []), weeks=2)
    assert no_meters.forecast(now, target, SLOT, 1)[1] == ["typical"]


def test_load_forecaster_settings_are_checked() -> None:
    with pytest.raises(PlanInputError, match="weeks=0"):
        LoadForecaster(lambda a, b: None, weeks=0)


def test_expected_market_price_is_the_median_at_the_same_time_of_day() -> None:
    start = MONDAY + 10 * DAY
    history = [(start - d * DAY + 18 * 3600, p) for d, p in ((1, 200), (2, 180), (3, 400), (4, None))]
    history += [(start - DAY + 3 * 3600, 90), (start - 30 * DAY + 3 * 3600, 10)]  # the last one too old
    got = expected_market_prices(history, start, 3600, 24, days=14)
    assert got[18] == 200  # median of 200, 180, 400; the empty interval says nothing
    assert got[3] == 90
    assert got[12] == 190  # no history at noon: median of all recent (90, 180, 200, 400)
    assert expected_market_prices([(start - DAY, None)], start, 3600, 2) == [None, None]


def test_slot_prices_count_on_the_market_only_within_the_households_rules() -> None:
    tou = parse_rule("t", {"time_of_day": {"00:00": 100, "17:00": 400, "21:00": 250}})
    assert tou is not None
    imp = rule_series(tou, MONDAY, 3600, 24)
    assert imp[16:22] == [100, 400, 400, 400, 400, 250]
    exp = [40] * 24
    market = [150.0] * 24
    policy = PricingPolicy(sell=FixedPrice(120), buy=TimeOfDayPrice(((0, 300), (20 * 60, 100))),
                           sell_floor_sat_per_kwh=0)
    p = slot_prices(MONDAY, 3600, imp, exp, market, policy, grid_fee_sat_per_kwh=10)
    # 17:00-20:00: market 150 + fee 10 beats the 400 tariff, the buy rule (300) allows it.
    assert p.buy[17] == 160 and p.source[17] == "market+market"
    # 20:00: the buy rule falls to 100 < 160: the order would not match, tariff it is.
    assert p.buy[20] == 400 and p.source[20] == "tariff+market"
    # Night: tariff 100 is cheaper than the market; selling at 150 (>= the rule's 120) beats 40, capped at buy.
    assert p.buy[2] == 100 and p.sell[2] == 100
    strict = PricingPolicy(sell=FixedPrice(200), buy=None)
    q = slot_prices(MONDAY, 3600, imp, exp, market, strict)
    assert q.buy == [float(x) for x in imp] and q.sell == [40.0] * 24
    assert set(q.source) == {"tariff+tariff"}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 2000), st.integers(0, 500), st.booleans()), min_size=0, max_size=40),
       st.lists(st.tuples(st.integers(0, 40_000), st.sampled_from([300, 900, 3600])), min_size=1, max_size=12),
       st.integers(0, 3))
def test_many_slots_at_once_read_exactly_what_one_by_one_reads(steps: list[tuple[int, int, bool]],
                                                                 slots: list[tuple[int, int]], late: int) -> None:
    """Readings at random gaps, increments, two meters (one starting late),
    some back-dated (held): the batched walk equals the metering's own."""
    store = ReadingStore(open_database(":memory:"))
    t, imp = MONDAY, 0
    for n, (gap, inc, back) in enumerate(steps):
        t += gap
        imp += inc
        store.insert_measurement("a", "a", t - (gap + 5 if back else 0), imp, 0, None, None, {}, "test")
        if n >= late:
            store.insert_measurement("b", "b", t + 7, 2 * imp, 0, None, None, {}, "test")
    history = store_history(store, lambda: ["a", "b"])
    wanted = [(MONDAY + a, MONDAY + a + length) for a, length in slots]
    assert history.many(wanted) == {s: history(*s) for s in wanted}


def test_the_first_forecast_reads_each_meter_once_not_each_slot() -> None:
    now = MONDAY + 4 * WEEK
    store = store_with_history(28, now)
    calls = {"one": 0, "many": 0}
    inner = store_history(store, lambda: ["m1"])

    class Counting:
        def __call__(self, a: int, b: int) -> float | None:
            calls["one"] += 1
            return inner(a, b)

        def many(self, slots):  # type: ignore[no-untyped-def]
            calls["many"] += 1
            return inner.many(slots)

    f = LoadForecaster(Counting(), weeks=4)
    wh, how = f.forecast(now, now, SLOT, 96)
    assert how == ["week"] * 96 and wh == [wh_in(now + i * SLOT) for i in range(96)]
    assert calls == {"one": 0, "many": 1}
    f.forecast(now + SLOT, now + SLOT, SLOT, 96)  # the next interval: one new slot, four weeks of it
    assert calls["many"] == 1 and calls["one"] == 4  # a few: one by one
