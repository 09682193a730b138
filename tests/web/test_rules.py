"""The web app's pure parts: the Prices form against anything a client
sends, and the login limiter's window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from microgrid.coordinator.market.orders import MAX_PRICE_SAT_PER_KWH
from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.web import prices
from microgrid.coordinator.web.accounts import LoginLimiter

FIELDS = [f"{side}_{k}" for side in ("sell", "buy") for k in ("mode", "price", "margin", "bound")]
VALUES = st.one_of(st.sampled_from(["off", "fixed", "tariff", "", "0", "-1", "100", "1e3", " 7 ", "٣"]),
                   st.text(max_size=12), st.integers(-10**12, 10**12).map(str))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS + ["action", "csrf", "junk"]), VALUES))
def test_any_prices_form_gives_rules_within_range_or_a_named_error(form: dict[str, str]) -> None:
    market = MarketSettings(enabled=True, zone="z", prices={"reserve_wh": 500}).validate()
    try:
        rules = prices.parse_form(form)
        table = prices.price_table(rules, market)
    except prices.PriceRuleError as e:
        assert any(name in str(e) for name in FIELDS + ["sell:", "buy:", "sell=", "buy="]), str(e)
        return
    assert table["reserve_wh"] == 500  # what the form does not set stays
    for side in ("sell", "buy"):
        assert (side in table) == (getattr(rules, side).mode != "off")
        if side in table:
            assert 0 <= table[side] <= MAX_PRICE_SAT_PER_KWH and isinstance(table[side], int)
    if "sell" in table and rules.sell.bound is not None:
        assert table["sell"] >= rules.sell.bound
    if "buy" in table and rules.buy.bound is not None:
        assert table["buy"] <= rules.buy.bound


def test_the_tariff_rules_follow_the_tariff_with_their_margin_and_bounds() -> None:
    market = MarketSettings(enabled=True, zone="z", import_tariff_sat_per_kwh=250,
                            export_tariff_sat_per_kwh=40).validate()
    rules = prices.parse_form({"sell_mode": "tariff", "sell_margin": "15", "buy_mode": "tariff", "buy_margin": "30",
                               "buy_bound": "210"})
    assert prices.limits(rules, market) == (55, 210)
    market.export_tariff_sat_per_kwh = 70  # the utility changes its tariff: the rule follows
    assert prices.limits(rules, market) == (85, 210)
    assert prices.limits(prices.parse_form({"sell_mode": "tariff", "sell_margin": "-50", "sell_bound": "45"}),
                         market) == (45, None)


def test_the_login_limiter_refuses_within_the_window_and_forgets_after() -> None:
    now = [1000.0]
    lim = LoginLimiter(3, 60, clock=lambda: now[0])
    for _ in range(3):
        assert lim.allowed("a")
        lim.failed("a")
    assert not lim.allowed("a") and lim.allowed("b")  # per address
    now[0] += 61
    assert lim.allowed("a")
    for i in range(30):  # many addresses together are limited too (10 x 3)
        lim.failed(f"x{i}")
    assert not lim.allowed("fresh")
    lim.succeeded("a")
    assert "a" not in lim.failures
