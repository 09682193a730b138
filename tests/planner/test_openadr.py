"""The energy company's price events over OpenADR 2.0b: openleadr's own VTN
on loopback sends them, our VEN (coordinator/energy_company/) receives them,
and the planner's next orders change."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from openleadr import OpenADRServer

from microgrid.coordinator.config import ConfigError, from_dict
from microgrid.coordinator.energy_company.events import OPT_IN, OPT_OUT, PriceEvents
from microgrid.coordinator.energy_company.settings import OpenAdrSettings
from microgrid.coordinator.energy_company.ven import start_openadr
from microgrid.coordinator.market.orders import BUY
from microgrid.coordinator.planner.journal import Journal
from microgrid.coordinator.planner.load import LoadForecaster
from microgrid.coordinator.planner.model import BatterySpec
from microgrid.coordinator.planner.scheduler import OPTIMAL, Scheduler
from microgrid.processes import free_tcp_port

from .test_scheduler import market, planner

# openleadr's VTN (test side only) keys its aiohttp app with a string.
pytestmark = pytest.mark.filterwarnings("ignore:It is recommended to use web.AppKey")

# Two days ahead of the real clock, at midnight UTC: openleadr's VTN and VEN
# judge an event's status (far, active, completed) by the real time, so the
# events must lie in the future; the planner itself is given its time.
MIDNIGHT = (int(time.time()) // 86_400 + 2) * 86_400
NOW = MIDNIGHT + 3600 + 120  # 01:02, the cheap night of test_scheduler's tariff (100 sat/kWh)
ORDER_SLOT = MIDNIGHT + 2 * 3600 + 900  # the interval the 01:02 decision places orders for


def utc(t: int) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def scheduler(tmp_path: Path) -> Scheduler:
    load = LoadForecaster(lambda a, b: 150.0)  # 600 W all day
    return Scheduler(planner(pv_kwp=0.0), market(), load, lambda: [], Journal(tmp_path / "planner.db"))


def battery() -> BatterySpec:
    return BatterySpec(capacity_wh=10_000, soc_wh=1000, min_soc_wh=1000, max_charge_w=5000, max_discharge_w=5000,
                       degradation_sat_per_kwh=20)


def price_event(event_id: str, start: int, prices: list[float], signal: str = "ELECTRICITY_PRICE",
                kind: str = "price", status: str = "far") -> dict[str, Any]:
    """An event as openleadr's VEN hands it to on_event."""
    return {"event_descriptor": {"event_id": event_id, "modification_number": 0, "event_status": status},
            "active_period": {"dtstart": utc(start), "duration": timedelta(hours=len(prices))},
            "event_signals": [{"signal_name": signal, "signal_type": kind,
                               "intervals": [{"dtstart": utc(start + 3600 * i), "duration": timedelta(hours=1),
                                              "signal_payload": p} for i, p in enumerate(prices)]}]}


def test_a_price_event_from_openleadrs_vtn_changes_the_next_orders(tmp_path: Path) -> None:
    without = scheduler(tmp_path / "a").decide(NOW, battery())
    assert without.status == OPTIMAL
    # At night the battery charges: the order buys load plus charging, at the 100 tariff.
    [b0] = [o for o in without.orders if o.side == BUY]
    assert b0.limit_sat_per_kwh == 100 and b0.quantity_wh > 150

    opted: list[tuple[str, str]] = []

    async def run() -> Any:
        port = free_tcp_port()
        vtn = OpenADRServer(vtn_id="ENERGYCO", http_host="127.0.0.1", http_port=port,
                            requested_poll_freq=timedelta(seconds=1), show_fingerprint=False)

        async def on_create_party_registration(info: dict[str, Any]) -> tuple[str, str]:
            return info.get("ven_id") or "ven-elm-1", "reg-1"

        def opt(ven_id: str, event_id: str, opt_type: str) -> None:
            opted.append((event_id, opt_type))

        vtn.add_handler("on_create_party_registration", on_create_party_registration)
        # 5.00 per kWh (x price_scale 100 = 500 sat/kWh) from 02:00 to 04:00: a night peak.
        vtn.add_event(ven_id="ven-elm-1", signal_name="ELECTRICITY_PRICE", signal_type="price",
                      intervals=[{"dtstart": utc(MIDNIGHT + 2 * 3600), "duration": timedelta(hours=1),
                                  "signal_payload": 5.0},
                                 {"dtstart": utc(MIDNIGHT + 3 * 3600), "duration": timedelta(hours=1),
                                  "signal_payload": 5.0}],
                      event_id="peak-1", callback=opt)
        # A load-shed event is not acted on: refused, so the VTN knows.
        vtn.add_event(ven_id="ven-elm-1", signal_name="LOAD_DISPATCH", signal_type="setpoint",
                      intervals=[{"dtstart": utc(MIDNIGHT + 2 * 3600), "duration": timedelta(hours=1),
                                  "signal_payload": 1000.0}],
                      event_id="shed-1", callback=opt)
        s = scheduler(tmp_path / "b")
        url = f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b"
        settings = OpenAdrSettings(enabled=True, vtn_url=url, ven_name="elm-1", ven_id="ven-elm-1",
                                   price_scale=100.0, retry_s=1.0).validate()
        # The VEN starts before the VTN is up: it registers at a later try.
        ven = start_openadr(settings, s, lambda: NOW)
        for _ in range(50):
            if ven.attempts >= 1:
                break
            await asyncio.sleep(0.1)
        assert ven.attempts >= 1 and not ven.registered
        await vtn.run()
        try:
            for _ in range(50):  # bounded: 10 s at most
                if {e for e, _ in opted} == {"peak-1", "shed-1"}:
                    break
                await asyncio.sleep(0.2)
            assert ven.registered
            return s.decide(NOW, battery()), ven.events
        finally:
            await ven.stop()
            await vtn.stop()

    with_event, events = asyncio.run(asyncio.wait_for(run(), 25))
    assert sorted(opted) == [("peak-1", OPT_IN), ("shed-1", OPT_OUT)]
    assert "LOAD_DISPATCH" in events.refused["shed-1"]
    assert [(w.start, w.end, w.value) for w in events.windows] == [
        (MIDNIGHT + 2 * 3600, MIDNIGHT + 3 * 3600, 500.0), (MIDNIGHT + 3 * 3600, MIDNIGHT + 4 * 3600, 500.0)]
    # The next interval's orders: the battery charges before the peak
    # (01:15-02:00) and covers the house's 600 W through it, so the 02:15
    # interval buys nothing instead of load plus charging.
    assert with_event.status == OPTIMAL and with_event.order_start == ORDER_SLOT
    assert [o for o in with_event.orders if o.side == BUY] == []
    sched = with_event.battery_schedule_w()
    assert min(sched[:3]) > 0 and sched[3:11] == pytest.approx([-600.0] * 8)  # 01:15-02:00 charge, peak discharge
    assert with_event.plan is not None
    assert with_event.plan.inputs.buy_sat_per_kwh[3:11] == [500.0] * 8  # the event's price in the plan
    assert with_event.plan.inputs.buy_sat_per_kwh[11] == 100.0  # the tariff again after it
    assert without.inputs_digest != with_event.inputs_digest


def test_price_signals_levels_and_hostile_events(tmp_path: Path) -> None:
    ev = PriceEvents(OpenAdrSettings(price_scale=100.0, max_price_sat_per_kwh=2000).validate())
    tariff = [100.0] * 8  # eight hourly slots from MIDNIGHT
    assert ev.receive(price_event("p", MIDNIGHT + 3600, [3.0]), NOW) == OPT_IN
    assert ev.receive(price_event("r", MIDNIGHT + 2 * 3600, [-0.5], kind="priceRelative"), NOW) == OPT_IN
    assert ev.receive(price_event("m", MIDNIGHT + 3 * 3600, [2.5], kind="priceMultiplier"), NOW) == OPT_IN
    assert ev.receive(price_event("s", MIDNIGHT + 4 * 3600, [0, 3], signal="SIMPLE", kind="level"), NOW) == OPT_IN
    assert ev.import_prices(tariff, MIDNIGHT, 3600) == [100, 300, 50, 250, 100, 300, 100, 100]
    # A later event wins where it overlaps; a modification replaces; a cancellation removes.
    assert ev.receive(price_event("p2", MIDNIGHT, [4.0, 4.0]), NOW) == OPT_IN
    assert ev.import_prices(tariff, MIDNIGHT, 3600)[:3] == [400, 400, 50]
    assert ev.receive(price_event("p2", MIDNIGHT, [1.0]), NOW) == OPT_IN
    assert ev.import_prices(tariff, MIDNIGHT, 3600)[:2] == [100, 300]
    assert ev.receive(price_event("p2", MIDNIGHT, [1.0], status="cancelled"), NOW) == OPT_IN
    assert ev.import_prices(tariff, MIDNIGHT, 3600)[0] == 100
    before = list(ev.windows)
    hostile = [
        price_event("h1", MIDNIGHT, [float("nan")]),
        price_event("h2", MIDNIGHT, [-1.0]),  # a negative absolute price
        price_event("h3", MIDNIGHT, [21.0]),  # 2100 sat/kWh, above the cap
        price_event("h4", MIDNIGHT, [7], signal="SIMPLE", kind="level"),
        price_event("h5", MIDNIGHT, ["5"]),  # type: ignore[list-item]
        price_event("h6", MIDNIGHT, [1.0], signal="LOAD_DISPATCH", kind="setpoint"),
        {"event_descriptor": {"event_id": "h7"}},
        {**price_event("h8", MIDNIGHT, [1.0]), "active_period": {"dtstart": datetime(2026, 1, 1),
                                                                 "duration": timedelta(hours=1)}},
    ]
    hostile[7]["event_signals"][0]["intervals"][0].pop("dtstart")  # naive start via the active period
    for h in hostile:
        assert ev.receive(h, NOW) == OPT_OUT, h
    assert ev.windows == before  # nothing changed
    assert set(ev.refused) == {f"h{i}" for i in range(1, 9)}
    assert "finite" in ev.refused["h1"] and "0..2000" in ev.refused["h3"] and "level 7" in ev.refused["h4"]
    assert "time zone" in ev.refused["h8"]
    # Windows that have ended go at the next event.
    ev.receive(price_event("late", MIDNIGHT + 7 * 3600, [1.0]), MIDNIGHT + 6 * 3600)
    assert {w.event_id for w in ev.windows} == {"late"}


def test_openadr_configuration_is_validated() -> None:
    base = {"planner": {"enabled": True, "pv_kwp": 0.0}}
    assert from_dict(base).openadr.enabled is False
    c = from_dict({**base, "openadr": {"enabled": True, "vtn_url": "https://vtn.example/OpenADR2/Simple/2.0b"}})
    assert c.openadr.simple_multipliers == [1.0, 1.5, 2.0, 3.0]
    for bad, words in [({"enabled": True}, "vtn_url"), ({"price_scale": 0}, "price_scale"),
                       ({"simple_multipliers": [1, 2]}, "simple_multipliers"), ({"cert": "a.pem"}, "cert"),
                       ({"retry_s": float("inf")}, "retry_s"), ({"enabled": "yes"}, "enabled")]:
        with pytest.raises(ConfigError, match=words):
            from_dict({**base, "openadr": bad})
    with pytest.raises(ConfigError, match=r"\[planner\]"):
        from_dict({"openadr": {"enabled": True, "vtn_url": "http://127.0.0.1:1/x"}})


def test_the_coordinator_joins_the_vtn_and_its_planner_plans_with_the_events_price(tmp_path: Path) -> None:
    from microgrid.coordinator.app import Coordinator
    from microgrid.coordinator.config import Config

    from ..conftest import free_udp_port

    async def run() -> None:
        port = free_tcp_port()
        vtn = OpenADRServer(vtn_id="ENERGYCO", http_host="127.0.0.1", http_port=port,
                            requested_poll_freq=timedelta(seconds=1), show_fingerprint=False)

        async def on_create_party_registration(info: dict[str, Any]) -> tuple[str, str]:
            return "ven-app", "reg-app"

        vtn.add_handler("on_create_party_registration", on_create_party_registration)
        vtn.add_event(ven_id="ven-app", signal_name="SIMPLE", signal_type="level", event_id="simple-1",
                      intervals=[{"dtstart": utc(MIDNIGHT + 2 * 3600), "duration": timedelta(hours=1),
                                  "signal_payload": 3}],
                      callback=lambda ven_id, event_id, opt_type: None)
        await vtn.run()
        config = Config()
        config.coap.port = free_udp_port()
        config.store.path = str(tmp_path / "c.db")
        config.planner = planner(pv_kwp=0.0)
        config.openadr = OpenAdrSettings(enabled=True, vtn_url=f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b",
                                         ven_name="app")
        config.validate()
        c = Coordinator(config)
        await c.start()
        try:
            assert c.openadr is not None and c.planner is not None
            for _ in range(50):  # bounded: 10 s at most
                if c.openadr.events.windows:
                    break
                await asyncio.sleep(0.2)
            s = c.planner.scheduler
            assert s.import_adjust is not None
            prices = s.inputs(NOW, None, None).buy_sat_per_kwh
            # SIMPLE level 3 (x3) over 02:00-03:00 on the 100 night tariff; the tariff before and after.
            assert prices[2:3] == [100.0] and prices[3:7] == [300.0] * 4 and prices[7] == 100.0
        finally:
            await c.stop()
            await vtn.stop()
        assert c.openadr is None

    asyncio.run(asyncio.wait_for(run(), 25))
