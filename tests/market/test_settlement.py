"""Settlement: delivery schedules, payments capped at the matched quantity,
utility fallback, energy balance to the Wh over a simulated day."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgrid.coordinator.market.clearing import ZoneRules, clear_interval
from microgrid.coordinator.market.orders import BUY, SELL
from microgrid.coordinator.market.pricing import (
    Battery, FixedPrice, Forecast, PricingPolicy, TimeOfDayPrice, plan_interval, sign_plans,
)
from microgrid.coordinator.market.settlement import (
    GRID_FEE, P2P, UTILITY, UTILITY_EXPORT, UTILITY_IMPORT, Metered, SettlementError, Tariff,
    check_energy_balance, delivery_schedule, report, report_lines, settle_interval,
)

from .helpers import CREATED, KEYS, START, order

TARIFF = Tariff(import_sat_per_kwh=250, export_sat_per_kwh=40)
PK = [k.public_key.to_bytes(compressed=True) for k in KEYS]


def one_trade(rules: ZoneRules = ZoneRules()):  # type: ignore[no-untyped-def]
    # Buyer 1 wants 1000 Wh at <= 150; seller 2 offers 1000 Wh at >= 50: price 100.
    return clear_interval([order(BUY, 1000, 150, who=1), order(SELL, 1000, 50, who=2)], "zone-a", START, 900, rules)


def by_kind(s, kind):  # type: ignore[no-untyped-def]
    return [(p.payer, p.payee, p.sats, p.wh) for p in s.payments if p.kind == kind]


def test_schedule_lists_what_each_participant_delivers_and_takes() -> None:
    sched = delivery_schedule(one_trade())
    assert [(d.participant, d.sell_wh, d.buy_wh) for d in sched] == sorted([(PK[1], 0, 1000), (PK[2], 1000, 0)])


def test_full_delivery_pays_the_trade_and_nothing_goes_to_the_utility() -> None:
    s = settle_interval(one_trade(), [Metered(PK[1], 0, 1000), Metered(PK[2], 1000, 0)], TARIFF)
    assert by_kind(s, P2P) == [(PK[1].hex(), PK[2].hex(), 100, 1000)]
    assert s.utility_import_wh == s.utility_export_wh == 0
    assert s.self_sufficiency_ppm == 1_000_000


def test_seller_shortfall_is_bought_by_the_buyer_from_the_utility() -> None:
    s = settle_interval(one_trade(), [Metered(PK[1], 0, 1000), Metered(PK[2], 600, 0)], TARIFF)
    assert by_kind(s, P2P) == [(PK[1].hex(), PK[2].hex(), 60, 600)]
    assert by_kind(s, UTILITY_IMPORT) == [(PK[1].hex(), UTILITY, 100, 400)]
    buyer = next(r for r in s.participants if r.participant == PK[1].hex())
    assert (buyer.bought_wh, buyer.paid_sat, buyer.shortfall_wh) == (600, 160, 400)
    assert s.self_sufficiency_ppm == 600_000


def test_buyer_shortfall_leaves_the_seller_exporting_to_the_utility() -> None:
    s = settle_interval(one_trade(), [Metered(PK[1], 0, 300), Metered(PK[2], 1000, 0)], TARIFF)
    assert by_kind(s, P2P) == [(PK[1].hex(), PK[2].hex(), 30, 300)]
    assert by_kind(s, UTILITY_EXPORT) == [(UTILITY, PK[2].hex(), 28, 700)]


def test_delivery_beyond_the_match_is_not_paid_by_the_peer() -> None:
    s = settle_interval(one_trade(), [Metered(PK[1], 0, 5000), Metered(PK[2], 4000, 0)], TARIFF)
    assert by_kind(s, P2P) == [(PK[1].hex(), PK[2].hex(), 100, 1000)]
    assert by_kind(s, UTILITY_IMPORT) == [(PK[1].hex(), UTILITY, 1000, 4000)]
    assert by_kind(s, UTILITY_EXPORT) == [(UTILITY, PK[2].hex(), 120, 3000)]


def test_grid_fee_is_paid_to_the_operator_on_delivered_energy() -> None:
    s = settle_interval(one_trade(ZoneRules(grid_fee_sat_per_kwh=20)), [Metered(PK[1], 0, 500), Metered(PK[2], 1000, 0)],
                        TARIFF, operator="feeder-7")
    assert by_kind(s, GRID_FEE) == [(PK[1].hex(), "feeder-7", 10, 500)]


def test_unmetered_participant_counts_as_zero_and_is_listed() -> None:
    s = settle_interval(one_trade(), [Metered(PK[1], 0, 1000), Metered(PK[3], 200, 0)], TARIFF)
    assert s.unmetered == [PK[2].hex()]
    assert s.delivered_wh == 0 and by_kind(s, P2P) == []
    assert by_kind(s, UTILITY_EXPORT) == [(UTILITY, PK[3].hex(), 8, 200)]


def test_bad_readings_and_tariffs_are_refused() -> None:
    with pytest.raises(SettlementError, match="two meter readings"):
        settle_interval(one_trade(), [Metered(PK[1], 0, 1), Metered(PK[1], 0, 2)], TARIFF)
    with pytest.raises(SettlementError, match="import_wh=-1"):
        Metered(PK[1], 0, -1)
    with pytest.raises(SettlementError, match="export_sat_per_kwh"):
        Tariff(1, -2)


def test_an_unbalanced_settlement_is_caught() -> None:
    s = settle_interval(one_trade(), [Metered(PK[1], 0, 1000), Metered(PK[2], 1000, 0)], TARIFF)
    s.participants[0].utility_import_wh += 1
    with pytest.raises(SettlementError, match="import"):
        check_energy_balance(s)


def test_report_has_price_volume_and_each_participants_figures() -> None:
    s = settle_interval(one_trade(), [Metered(PK[1], 0, 1000), Metered(PK[2], 800, 0)], TARIFF)
    r = json.loads(json.dumps(report(s)))
    assert r["clearing_price_sat_per_kwh"] == 100 and r["matched_wh"] == 1000 and r["delivered_wh"] == 800
    assert r["participants"][PK[2].hex()]["sold_wh"] == 800 and r["participants"][PK[2].hex()]["earned_sat"] == 80
    assert r["self_sufficiency_ppm"] == 800_000
    lines = report_lines(s, {PK[2].hex(): "flat-2"})
    assert "price 100 sat/kWh" in lines[0] and "80.0%" in lines[0]
    assert any(line.startswith("  flat-2: bought 0 Wh, sold 800 Wh") for line in lines)


spec = st.tuples(st.sampled_from([BUY, SELL]), st.integers(1, 400), st.integers(0, 40), st.integers(0, 5))


@given(st.lists(spec, max_size=12), st.lists(st.tuples(st.integers(0, 800), st.integers(0, 800)), min_size=8,
                                             max_size=8), st.integers(0, 30))
@settings(max_examples=150, deadline=None)
def test_every_wh_is_accounted_for_and_no_peer_pays_beyond_the_match(specs: list, meters: list, fee: int) -> None:
    book = [order(s, wh, p * 5, who=w, nonce=i) for i, (s, wh, p, w) in enumerate(specs)]
    cleared = clear_interval(book, "zone-a", START, 900, ZoneRules(grid_fee_sat_per_kwh=fee))
    readings = [Metered(PK[i], e, m) for i, (e, m) in enumerate(meters) if (e, m) != (0, 0) or i % 2]
    s = settle_interval(cleared, readings, TARIFF)  # checks the balance itself
    check_energy_balance(s)
    p2p = [p for p in s.payments if p.kind == P2P]
    assert sum(p.wh for p in p2p) == s.delivered_wh <= cleared.volume_wh
    matched_value = sum(p.sats for p in cleared.pairs)
    assert sum(p.sats for p in p2p) <= matched_value
    assert sum(r.paid_sat for r in s.participants) - sum(r.earned_sat for r in s.participants) == \
        sum(p.sats for p in s.payments if p.payer != UTILITY and p.payee == UTILITY or p.kind == GRID_FEE) - \
        sum(p.sats for p in s.payments if p.payer == UTILITY)
    assert all(p.sats >= 0 and p.wh > 0 for p in s.payments)


# -- a simulated day --------------------------------------------------------------------


def pv_wh(peak_w: int, t: int) -> int:
    hour = (t % 86_400) / 3600
    return int(peak_w * max(0.0, math.sin(math.pi * (hour - 6) / 12)) / 4)  # Wh in 15 min


def test_energy_balance_over_a_simulated_day_closes_to_the_wh() -> None:
    rnd = random.Random(5)
    day0 = START - START % 86_400
    homes = [  # (pv peak W, base load W, battery or None, policy)
        (4000, 300, Battery(3000, 8000, 1000, 1000), PricingPolicy(sell=FixedPrice(90), buy=FixedPrice(180),
                                                                   reserve_wh=2000, sell_floor_sat_per_kwh=80)),
        (3000, 400, None, PricingPolicy(sell=TimeOfDayPrice(((0, 70), (17 * 60, 160))), buy=FixedPrice(170))),
        (0, 600, None, PricingPolicy(buy=TimeOfDayPrice(((0, 120), (7 * 60, 200))))),
        (0, 450, None, PricingPolicy(buy=FixedPrice(150))),
        (5000, 350, None, PricingPolicy(sell=FixedPrice(60), buy=FixedPrice(200))),
    ]
    stored = {0: 3000}
    start_stored = dict(stored)
    gen_total = cons_total = ui_total = ue_total = 0
    paid = earned = delivered = 0
    for k in range(96):
        t = day0 + 900 * k
        book, readings = [], []
        for i, (peak, load, bat, policy) in enumerate(homes):
            gen = pv_wh(peak, t)
            cons = load // 4 + rnd.randint(0, 150)
            battery = None if bat is None else Battery(stored[i], bat.capacity_wh, bat.max_charge_wh,
                                                       bat.max_discharge_wh)
            forecast = Forecast(t, max(0, gen + rnd.randint(-100, 100)), max(0, cons + rnd.randint(-80, 80)))
            book += sign_plans(plan_interval(policy, forecast, battery), KEYS[i], "zone-a", t, t - 3600, t + 900,
                               first_nonce=k * 10)
            net = gen - cons
            if bat is not None:  # the battery follows the actual net, keeping the reserve
                if net > 0:
                    charge = min(net, bat.capacity_wh - stored[i], bat.max_charge_wh)
                else:
                    charge = -min(-net, max(0, stored[i] - policy.reserve_wh), bat.max_discharge_wh)
                stored[i] += charge
                net -= charge
            readings.append(Metered(PK[i], max(net, 0), max(-net, 0)))
            gen_total += gen
            cons_total += cons
        cleared = clear_interval(book, "zone-a", t, 900, ZoneRules(capacity_wh=3000, grid_fee_sat_per_kwh=5))
        s = settle_interval(cleared, readings, TARIFF)
        ui_total += s.utility_import_wh
        delivered += s.delivered_wh
        ue_total += s.utility_export_wh
        paid += sum(r.paid_sat for r in s.participants)
        earned += sum(r.earned_sat for r in s.participants)
    delta_stored = sum(stored.values()) - sum(start_stored.values())
    assert gen_total + ui_total == cons_total + ue_total + delta_stored
    assert gen_total > 0 and ui_total > 0 and ue_total > 0 and earned > 0 and paid > earned
    assert delivered > 0  # neighbours did trade
