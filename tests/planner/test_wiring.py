"""The planner built from the coordinator's config and stores: the load
from real stored readings, expected prices from really cleared books."""

from __future__ import annotations

from pathlib import Path

from bitcoinx import PrivateKey

from microgrid.coordinator.config import from_dict
from microgrid.coordinator.market.clearing import clear_interval
from microgrid.coordinator.market.orders import BUY, SELL, make_order
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
