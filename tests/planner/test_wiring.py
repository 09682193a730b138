"""The planner built from the coordinator's config and stores: the load
from real stored readings, expected prices from really cleared books."""

from __future__ import annotations

from pathlib import Path

import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.config import from_dict
from microgrid.coordinator.market.clearing import clear_interval
from microgrid.coordinator.market.orders import BUY, SELL, make_order
from microgrid.coordinator.planner.journal import Journal
from microgrid.coordinator.planner.pv import PvArray, pv_forecast_wh
from microgrid.coordinator.planner.scheduler import OPTIMAL
from microgrid.coordinator.planner.wiring import build_scheduler, cleared_prices
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore

MIDNIGHT = 1_781_481_600
KEYS = [PrivateKey.from_int(7000 + i) for i in range(2)]


def cleared_at(start: int, with_trade: bool):  # type: ignore[no-untyped-def]
    orders = [make_order(KEYS[0], SELL, "elm", start, 1000, 150, start + 900, 1, start - 3600)]
    if with_trade:
        orders.append(make_order(KEYS[1], BUY, "elm", start, 1000, 200, start + 900, 1, start - 3600))
    return clear_interval(orders, "elm", start)


def test_built_from_config_it_plans_with_stored_load_and_cleared_prices(tmp_path: Path) -> None:
    cfg = from_dict({
        "store": {"path": str(tmp_path / "microgrid.db")},
        "market": {"zone": "elm", "prices": {"buy": 300}, "import_tariff_sat_per_kwh": 250},
        "planner": {"enabled": True, "latitude": 52.37, "longitude": 4.9, "pv_kwp": 3.0, "load_weeks": 1},
    })
    store = ReadingStore(open_database(cfg.store.path))
    now = MIDNIGHT + 7 * 86_400
    for i, t in enumerate(range(now - 7 * 86_400, now + 1, 900)):
        store.insert_measurement("m1", "house", t, 200 * i, 0, None, None, {}, "test")
    # Yesterday 18:00 cleared at 175 (between the ask 150 and the bid 200); 18:15 had no trade.
    evening = now - 86_400 + 18 * 3600
    cleared = {evening: cleared_at(evening, True), evening + 900: cleared_at(evening + 900, False)}
    assert cleared_prices(cleared) == [(evening, 175), (evening + 900, None)]
    s = build_scheduler(cfg, store, lambda: ["m1"], lambda: cleared_prices(cleared))
    d = s.decide(now, None, None)
    assert d.status == OPTIMAL and d.plan is not None
    assert d.plan.inputs.load_wh == [200.0] * 96  # every slot last week: 200 Wh
    k = 18 * 4
    assert d.plan.inputs.buy_sat_per_kwh[k] == 175 and d.plan.inputs.price_source[k] == "market+tariff"
    assert (tmp_path / "planner.db").exists() and s.journal is not None and s.journal.count() == 1


def test_a_pv_meter_leans_the_next_hours_on_the_clouds_it_measured(tmp_path: Path) -> None:
    cfg = from_dict({
        "store": {"path": str(tmp_path / "microgrid.db")},
        "planner": {"enabled": True, "latitude": 52.37, "longitude": 4.9, "pv_kwp": 4.0, "pv_sky_share": 0.8,
                    "pv_meters": ["pv1"]},
    })
    store = ReadingStore(open_database(cfg.store.path))
    now = MIDNIGHT + 11 * 3600 + 870  # 11:14:30, 30 s before the 11:15 slot
    last = MIDNIGHT + 10 * 3600 + 45 * 60  # 10:45-11:00, the last slot over
    clear = pv_forecast_wh(PvArray(52.37, 4.9, 30.0, 180.0, 4.0), last, 900, 1)[0]
    store.insert_measurement("pv1", "array", last, 0, 1000, None, None, {}, "test")
    store.insert_measurement("pv1", "array", last + 900, 0, 1000 + round(0.3 * clear), None, None, {}, "test")
    s = build_scheduler(cfg, store, lambda: ["m1"], lambda: [])
    slot0 = MIDNIGHT + 11 * 3600 + 900
    got = s.pv_forecast(now, slot0, 900, 96)
    sky = pv_forecast_wh(PvArray(52.37, 4.9, 30.0, 180.0, 4.0), slot0, 900, 96)
    assert got[0] == pytest.approx(0.3 * sky[0], rel=0.01)  # a grey morning: this slot as the last
    assert got[95] == pytest.approx(0.8 * sky[95], rel=1e-3)  # tomorrow: the usual share
    # Without the meter's readings: the usual share from the start.
    none = build_scheduler(cfg, ReadingStore(open_database(":memory:")), lambda: [], lambda: [])
    assert none.pv_forecast(now, slot0, 900, 4) == pytest.approx([0.8 * x for x in sky[:4]])


def test_the_coordinator_runs_the_planner_and_the_market_takes_its_orders(tmp_path: Path) -> None:
    import asyncio
    from types import SimpleNamespace

    from microgrid.coordinator.app import Coordinator
    from microgrid.coordinator.market.pricing import Forecast

    from ..conftest import free_udp_port

    cfg = from_dict({
        "coap": {"port": free_udp_port()},
        "store": {"path": str(tmp_path / "c.db")},
        "market": {"zone": "elm", "prices": {"buy": 300}},
        "planner": {"enabled": True},
    })
    boundary = MIDNIGHT + 18 * 3600

    class Stopped:  # time stands 30 s before a boundary: the planner's moment to decide
        def now(self) -> float:
            return float(boundary - 30)

    clock = Stopped()

    async def go() -> None:
        c = Coordinator(cfg, clock=clock)
        own = Forecast(0, 0, 0), None
        # The market's service as the planner sees it (the real one needs the overlay and channels).
        c.trading = SimpleNamespace(market=SimpleNamespace(forecaster=lambda start: own),
                                    stats=SimpleNamespace(cleared={}))
        await c.start()
        try:
            for _ in range(1200):  # the first decision imports pvlib: seconds on a busy machine
                if c.planner.scheduler.latest is not None:
                    break
                await asyncio.sleep(0.05)
            d = c.planner.scheduler.latest
            assert d is not None and d.slot_start == boundary and d.order_start == boundary + 3600
            planned = c.trading.market.forecaster(boundary + 3600)
            assert planned[0].consumption_wh == sum(o.quantity_wh for o in d.orders if o.side == "buy") > 0
            assert c.trading.market.forecaster(boundary + 7200) is own  # not decided: the market's own
            journal = c.planner.scheduler.journal
        finally:
            await c.stop()
        assert c.planner is None
        [e] = Journal(tmp_path / "planner.db").recent()
        assert e.slot_start == boundary and journal is not None and e.status == "optimal"

    asyncio.run(go())


def test_the_coordinators_battery_and_connected_charger_are_the_ones_commanded(tmp_path: Path) -> None:
    import asyncio
    from types import SimpleNamespace

    from microgrid.coordinator.planner.model import EvNeed
    from microgrid.coordinator.planner.wiring import start_planner

    from .test_service import FakeBattery, FakeCharger, State

    cfg = from_dict({"store": {"path": str(tmp_path / "c.db")}, "planner": {"enabled": True}})
    boundary = MIDNIGHT + 3600

    class Early:  # ten minutes before the boundary: the background loop is still waiting
        def now(self) -> float:
            return float(boundary - 600)

    away, home = FakeCharger("cp-a"), FakeCharger("cp-b")
    chargers = {"cp-a": SimpleNamespace(connected=False, set_limit=away.set_limit, clear_limit=away.clear_limit),
                "cp-b": SimpleNamespace(connected=True, set_limit=home.set_limit, clear_limit=home.clear_limit)}
    battery = FakeBattery(State(50.0, 10_000, 3000.0, 3000.0))
    coordinator = SimpleNamespace(
        config=cfg, store=ReadingStore(open_database(cfg.store.path)), clock=Early(), trading=None,
        devices=SimpleNamespace(batteries={"home": battery}, fleet=SimpleNamespace(chargers=lambda: chargers)))
    needs: list[EvNeed | None] = [None, EvNeed(5000, boundary + 5 * 3600, 7400)]

    async def go() -> None:
        running = start_planner(coordinator, ev_need=lambda now: needs[0])
        try:
            await running.service.step()  # no EV need known: our limit, if any, is lifted; nothing paused
            assert home.cleared == 1 and home.limits == [] and away.cleared == 0
            assert len(battery.commands) + battery.released == 1
            needs.pop(0)
            d = await running.service.step()
            assert home.limits == [(d.ev_w, float(boundary + 1800))] and away.limits == []
        finally:
            await running.stop()

    asyncio.run(go())
