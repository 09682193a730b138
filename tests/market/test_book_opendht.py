"""Three coordinators on real OpenDHT nodes on loopback publish their
households' orders, collect the book until gate closure by the real clock,
and compute byte-identical cleared books (checked by exchanging hashes)."""

from __future__ import annotations

import asyncio
import time

import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.clock import SystemClock
from microgrid.coordinator.market import book as bk
from microgrid.coordinator.market.clearing import ZoneRules, clear_interval
from microgrid.coordinator.market.pricing import FixedPrice, Forecast, PricingPolicy, plan_interval, sign_plans

engine = pytest.importorskip("microgrid.coordinator.overlay.engine")
overlay_pkg = pytest.importorskip("microgrid.coordinator.overlay")


def test_three_coordinators_on_opendht_loopback_clear_byte_identical_books() -> None:
    async def go() -> None:
        keys = [PrivateKey.from_int(77_000 + i) for i in range(3)]
        nodes: list = []
        for k in keys:
            boot = [f"127.0.0.1:{nodes[0].port}"] if nodes else []
            o = engine.Overlay(k, overlay_pkg.OverlaySettings.loopback(bootstrap=boot))
            await o.start()
            nodes.append(o)
        try:
            deadline = time.monotonic() + 15
            while not all(n.peers() for n in nodes) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            clock = SystemClock()
            now = int(clock.now())
            start = now - now % 900 + 1800
            zone = "loop-zone"
            forecasts = [Forecast(start, 2000, 200), Forecast(start, 900, 300), Forecast(start, 0, 2500)]
            published = 0
            for i, (ov, k) in enumerate(zip(nodes, keys)):
                policy = PricingPolicy(sell=FixedPrice(50 + 20 * i), buy=FixedPrice(160))
                for so in sign_plans(plan_interval(policy, forecasts[i]), k, zone, start, now, start + 900, 1):
                    for _ in range(5):  # a young network may not confirm the first put
                        if await bk.publish_order(ov, so, clock.now()):
                            break
                        await asyncio.sleep(0.5)
                    else:
                        raise AssertionError(f"overlay never confirmed order {so.hash_hex[:16]}")
                    published += 1
            gate_lead = start - (int(clock.now()) + 3)  # the gate closes three seconds from now
            collectors = [bk.BookCollector(ov, zone, start, clock, gate_lead_s=gate_lead) for ov in nodes]
            books = await asyncio.gather(*(c.collect(poll_s=0.5) for c in collectors))
            assert [len(b) for b in books] == [published] * 3
            cleared = [clear_interval(b, zone, start, 900, ZoneRules(grid_fee_sat_per_kwh=3)) for b in books]
            assert len({c.encoded for c in cleared}) == 1 and cleared[0].volume_wh == 1800 + 600
            for ov, c in zip(nodes, cleared):
                assert await bk.publish_result(ov, ov.publisher_id, c)
            deadline = time.monotonic() + 10
            while True:
                cmps = [await bk.compare_with_peers(ov, ov.publisher_id, c) for ov, c in zip(nodes, cleared)]
                if all(len(c.agree) == 2 for c in cmps) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert all(c.unanimous and len(c.agree) == 2 for c in cmps)
        finally:
            await asyncio.gather(*(n.stop() for n in nodes))
    asyncio.run(go())
