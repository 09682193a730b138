"""Building the planner from the coordinator's configuration and stores,
and starting it inside a running coordinator, so app.py needs a few lines:

    # Coordinator.start(), after the trading service is made:
    if self.config.planner.enabled:
        from .planner.wiring import start_planner
        self.planner = start_planner(self)   # its batteries and chargers from self.devices
    # Coordinator.stop(), before stop_trading():
    if self.planner is not None:
        await self.planner.stop()
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable, Mapping

from ..market.clearing import ClearedInterval
from ..store.readings import ReadingStore
from .journal import Journal
from .load import LoadForecaster, store_export, store_history
from .model import EvNeed
from .scheduler import PriceHistory, Scheduler
from .service import PlannerService


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


class RunningPlanner:
    """The planner running inside a coordinator (start_planner); `stop()`
    ends it."""

    def __init__(self, scheduler: Scheduler, service: PlannerService) -> None:
        self.scheduler = scheduler
        self.service = service
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] = asyncio.ensure_future(service.run(self._stop))

    async def stop(self) -> None:
        self._stop.set()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        if self.scheduler.journal is not None:
            self.scheduler.journal.close()


class FleetCharger:
    """The charge point the plan commands, looked up in the OCPP central
    system (devices/interface.py ChargerFleet) at each command: chargers
    connect and go away while the planner runs. The first connected one
    (by id) is the household's; with none connected there is nothing to
    command."""

    def __init__(self, fleet: Any) -> None:
        self.fleet = fleet
        self.charger_id = "fleet"

    def _current(self) -> Any:
        connected = [c for _, c in sorted(self.fleet.chargers().items()) if c.connected]
        return connected[0] if connected else None

    async def set_limit(self, limit_w: float, until: float | None = None, evse_id: int = 0) -> Any:
        c = self._current()
        return None if c is None else await c.set_limit(limit_w, until=until, evse_id=evse_id)

    async def clear_limit(self, evse_id: int = 0) -> None:
        c = self._current()
        if c is not None:
            await c.clear_limit(evse_id)


def start_planner(coordinator: Any, battery: Any = None, charger: Any = None,
                  ev_need: Callable[[int], EvNeed | None] | None = None) -> RunningPlanner:
    """Start the planner in a running coordinator (app.py's `Coordinator`:
    its config, store and clock, its batteries and OCPP chargers
    (`coordinator.devices`) unless given, and its trading service when the
    market is on): decisions every interval, the devices commanded, and the
    market's orders for each interval taken from the plan (the market's
    own forecaster stays the fallback for an interval the planner has not
    decided)."""
    trading = getattr(coordinator, "trading", None)
    devices = getattr(coordinator, "devices", None)  # devices/service.py DeviceService, when configured
    if battery is None and devices is not None and devices.batteries:
        battery = devices.batteries[sorted(devices.batteries)[0]]  # one battery per household (for now)
    if charger is None and devices is not None and devices.fleet is not None:
        charger = FleetCharger(devices.fleet)

    def history() -> list[tuple[int, int | None]]:
        return cleared_prices(trading.stats.cleared) if trading is not None else []

    store = coordinator.store
    ids = getattr(coordinator, "connection_device_ids", None) or (lambda: [d.device_id for d in store.devices()])
    scheduler = build_scheduler(coordinator.config, store, ids, history)
    if trading is not None:
        market = trading.market
        before = market.forecaster

        def forecaster(interval_start: int) -> Any:
            planned = scheduler.market_forecast(interval_start)
            return planned if planned is not None else before(interval_start)

        market.forecaster = forecaster
    service = PlannerService(scheduler, coordinator.clock, battery, charger, ev_need)
    return RunningPlanner(scheduler, service)
