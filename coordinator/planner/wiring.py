"""Building the planner from the coordinator's configuration and stores,
so app.py needs a few lines only:

    from .planner.wiring import build_scheduler, cleared_prices
    if self.config.planner.enabled:
        self.planner = build_scheduler(self.config, self.store,
                                       lambda: [d.device_id for d in self.store.devices()],
                                       lambda: cleared_prices(self.trading.stats.cleared if self.trading else {}))
        # and for the market's orders, in TradingService.forecast:
        #     got = planner.market_forecast(interval_start); if got: return got
        # then PlannerService(self.planner, self.clock, battery, charger).run(stop)
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from ..market.clearing import ClearedInterval
from ..store.readings import ReadingStore
from .journal import Journal
from .load import LoadForecaster, store_export, store_history
from .scheduler import PriceHistory, Scheduler


def cleared_prices(cleared: Mapping[int, ClearedInterval]) -> list[tuple[int, int | None]]:
    """(interval start, clearing price or None) of the intervals cleared
    here, what prices.expected_market_prices reads."""
    return [(start, c.price_sat_per_kwh if c.volume_wh > 0 else None) for start, c in cleared.items()]


def build_scheduler(config: Any, store: ReadingStore, device_ids: Callable[[], Iterable[str]],
                    price_history: PriceHistory) -> Scheduler:
    """`config` is the coordinator's Config ([planner], [market], store paths)."""
    p, m = config.planner, config.market
    load = LoadForecaster(store_history(store, device_ids), weeks=p.load_weeks,
                          fallback_daily_wh=float(p.fallback_daily_wh), utc_offset_s=m.utc_offset_s)
    pv_observed = store_export(store, p.pv_meters) if p.pv_meters else None
    return Scheduler(p, m, load, price_history, Journal(config.resolve(p.journal)), pv_observed)
