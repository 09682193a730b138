"""The market service: coordinators place, collect, clear and compare each
interval on a shared simulated clock, and settle with meter readings."""

from __future__ import annotations

import asyncio

from microgrid.coordinator.market.pricing import Forecast
from microgrid.coordinator.market.service import MarketService
from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.market.settlement import Metered, check_energy_balance

from .helpers import KEYS, START
from .overlay_stub import ManualClock, StubNetwork, StubOverlay

HOMES = [  # (sell price, buy price, generation Wh, consumption Wh) per interval
    ({"sell": 70, "buy": 180}, 1500, 300),
    ({"sell": 90, "buy": 170}, 800, 400),
    ({"buy": 200}, 0, 1700),
]


def services(clock: ManualClock, step: float = 30.0) -> list[MarketService]:
    net = StubNetwork(clock)

    async def sleep(s: float) -> None:  # simulated time moves in small steps, like a real clock
        await clock.sleep(min(s, step))

    out = []
    for i, (prices, gen, cons) in enumerate(HOMES):
        settings = MarketSettings(enabled=True, zone="zone-a", feeder_capacity_w=8000, grid_fee_sat_per_kwh=4,
                                  prices=prices, order_lead_s=1800, gate_lead_s=300).validate()
        out.append(MarketService(StubOverlay(net, f"c{i}"), KEYS[i], settings, clock,
                                 lambda t, g=gen, c=cons: (Forecast(t, g, c), None), sleep=sleep, poll_s=60,
                                 result_wait_s=30, peer_id=f"c{i}"))
    return out


def test_three_services_clear_the_same_book_and_settle_it() -> None:
    async def go() -> None:
        clock = ManualClock(START - 4000)
        svcs = services(clock)
        rounds = await asyncio.gather(*(s.run_interval(START) for s in svcs))
        assert clock.now() < START
        hashes = {r.cleared.hash for r in rounds if r.cleared}
        assert len(hashes) == 1
        assert all(r.comparison is not None and r.comparison.unanimous and len(r.comparison.agree) == 2
                   for r in rounds)
        c = rounds[0].cleared
        assert c is not None and c.volume_wh == 1200 + 400 and c.price_sat_per_kwh is not None
        assert [len(r.own_orders) for r in rounds] == [1, 1, 1] and len(rounds[0].book) == 3
        readings = [Metered(KEYS[0].public_key.to_bytes(compressed=True), 1100, 0),
                    Metered(KEYS[1].public_key.to_bytes(compressed=True), 400, 0),
                    Metered(KEYS[2].public_key.to_bytes(compressed=True), 0, 1800)]
        settled = [s.settle(START, readings) for s in svcs]
        assert len({tuple(x.payments) for x in settled}) == 1
        check_energy_balance(settled[0])
        assert settled[0].delivered_wh == 1500 and settled[0].utility_import_wh == 300
    asyncio.run(go())


def test_next_interval_leaves_time_to_place_orders() -> None:
    svc = services(ManualClock(START - 4000))[0]
    assert svc.next_interval(START - 1800) == START
    assert svc.next_interval(START - 1799) == START + 900


def test_run_clears_interval_after_interval_until_stopped() -> None:
    async def go() -> None:
        clock = ManualClock(START - 1800 - 10)
        svcs = services(clock, step=10)
        stop = asyncio.Event()
        runs = [asyncio.ensure_future(s.run(stop)) for s in svcs]
        for _ in range(20_000):  # bounded: stop once three intervals are compared everywhere
            done = [sorted(k for k, r in s.rounds.items() if r.comparison is not None) for s in svcs]
            if all(len(d) >= 3 for d in done):
                break
            await asyncio.sleep(0)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*runs), 5)
        first = [s.rounds[START] for s in svcs]
        assert len({r.cleared.hash for r in first if r.cleared}) == 1
        for k in (START, START + 900, START + 1800):
            assert len({s.rounds[k].cleared.hash for s in svcs if s.rounds[k].cleared}) == 1
            assert all(s.rounds[k].comparison.unanimous for s in svcs)  # type: ignore[union-attr]
    asyncio.run(go())
