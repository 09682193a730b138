"""Publication: orders through the overlay, collection until gate closure,
identical cleared books on every coordinator, disagreement detection."""

from __future__ import annotations

import asyncio
import logging

import cbor2
import pytest

from microgrid.coordinator.market import book as bk
from microgrid.coordinator.market.clearing import ZoneRules, clear_interval
from microgrid.coordinator.market.orders import BUY, SELL, encode_body
from microgrid.coordinator.market.pricing import FixedPrice, Forecast, PricingPolicy, plan_interval, sign_plans

from .helpers import CREATED, KEYS, START, order
from .overlay_stub import ManualClock, StubNetwork, StubOverlay

GATE_LEAD = 300


def test_keys_derive_from_zone_and_interval() -> None:
    assert bk.order_key("zone-a", START) == f"mg/market/zone-a/{START}"
    assert bk.result_key("zone-a", START) == f"mg/market-result/zone-a/{START}"
    with pytest.raises(bk.BookError, match="zone"):
        bk.order_key("a/b", START)
    with pytest.raises(bk.BookError, match="interval_start"):
        bk.order_key("zone-a", -1)


def test_order_is_published_under_its_key_until_it_expires() -> None:
    async def go() -> None:
        clock = ManualClock(START - 3600)
        net = StubNetwork(clock)
        ov = StubOverlay(net, "a")
        so = order(SELL, 100, 50)
        assert await bk.publish_order(ov, so, clock.now())
        assert await ov.get(bk.order_key("zone-a", START)) == [so.encoded]
        (_, until), = net.values[bk.order_key("zone-a", START)].values()
        assert until == so.order.expires
        dead = order(SELL, 100, 50, nonce=2, expires=START - 4000)
        assert not await bk.publish_order(ov, dead, clock.now())
    asyncio.run(go())


def household_orders(i: int, start: int, created: int) -> list:
    """Three households: two with solar surplus, one buying."""
    policy = PricingPolicy(sell=FixedPrice(60 + 10 * i), buy=FixedPrice(140))
    forecast = [Forecast(start, 1800, 300), Forecast(start, 1200, 500), Forecast(start, 0, 2600)][i]
    plans = plan_interval(policy, forecast)
    return sign_plans(plans, KEYS[i], "zone-a", start, created, start + 900, first_nonce=1)


async def run_three(overlays: list, clock: ManualClock, sleep=None) -> list:  # type: ignore[no-untyped-def]
    """Each coordinator publishes its households' orders, collects the book
    until gate closure, clears it, publishes and compares the hash."""
    created = int(clock.now())
    for i, ov in enumerate(overlays):
        for so in household_orders(i, START, created):
            assert await bk.publish_order(ov, so, clock.now())
    collectors = [bk.BookCollector(ov, "zone-a", START, clock, gate_lead_s=GATE_LEAD) for ov in overlays]
    books = await asyncio.gather(*(c.collect(poll_s=60, sleep=sleep or clock.sleep) for c in collectors))
    assert clock.now() >= START - GATE_LEAD
    cleared = [clear_interval(b, "zone-a", START, 900, ZoneRules(capacity_wh=5000)) for b in books]
    for i, (ov, c) in enumerate(zip(overlays, cleared)):
        assert await bk.publish_result(ov, f"coord-{i}", c)
    comparisons = [await bk.compare_with_peers(ov, f"coord-{i}", c) for i, (ov, c) in enumerate(zip(overlays, cleared))]
    return [books, cleared, comparisons, collectors]


def test_three_coordinators_compute_byte_identical_books_through_the_overlay() -> None:
    async def go() -> None:
        clock = ManualClock(START - 1800)
        net = StubNetwork(clock)
        overlays = [StubOverlay(net, f"c{i}") for i in range(3)]
        books, cleared, comparisons, _ = await run_three(overlays, clock)
        assert [len(b) for b in books] == [3, 3, 3]
        assert cleared[0].encoded == cleared[1].encoded == cleared[2].encoded
        assert cleared[0].volume_wh == 1500 + 700 and cleared[0].price_sat_per_kwh is not None
        for i, cmp in enumerate(comparisons):
            assert cmp.unanimous and len(cmp.agree) == 2
    asyncio.run(go())


def test_collection_ignores_garbage_unsigned_late_and_other_books_with_logged_reasons(
        caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        clock = ManualClock(START - 1800)
        net = StubNetwork(clock)
        good, attacker = StubOverlay(net, "good"), StubOverlay(net, "attacker")
        key = bk.order_key("zone-a", START)
        ok = order(BUY, 100, 90, who=1)
        await bk.publish_order(good, ok, clock.now())
        await attacker.put(key, b"\x00garbage", 600)
        await attacker.put(key, cbor2.dumps([1, encode_body(order(SELL, 100, 1, who=2).order)], canonical=True), 600)
        await attacker.put(key, order(SELL, 100, 1, who=2, zone="zone-b").encoded, 600)
        await attacker.put(key, ok.encoded, 600)  # a replay of someone else's order
        collector = bk.BookCollector(good, "zone-a", START, clock, gate_lead_s=GATE_LEAD)

        with caplog.at_level(logging.INFO, logger="microgrid.market"):
            got = await collector.collect(poll_s=120, sleep=clock.sleep)
            # After the gate: published, fetched or offered, it is late.
            late = order(SELL, 100, 1, who=3)
            await bk.publish_order(good, late, clock.now())
            await collector.fetch()
            assert collector.offer(order(SELL, 100, 1, who=3, nonce=5).encoded) is None
        assert got == [ok] == collector.orders()
        r = collector.filter.rejected
        assert (r["invalid"], r["unsigned"], r["wrong book"], r["after gate closure"]) == (1, 1, 1, 2)
        assert r["duplicate"] == 0  # the replay is the same bytes: judged once, not counted again
        assert "order ignored (unsigned)" in caplog.text
        assert collector.offer(12345) is None  # not bytes at all
    asyncio.run(go())


def test_a_coordinator_that_missed_an_order_disagrees_and_it_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        clock = ManualClock(START - 1800)
        net = StubNetwork(clock)
        a, b = StubOverlay(net, "a"), StubOverlay(net, "b")
        sos = [order(BUY, 500, 120, who=1), order(SELL, 400, 50, who=2), order(SELL, 300, 70, who=3)]
        full = clear_interval(sos, "zone-a", START)
        partial = clear_interval(sos[:2], "zone-a", START)  # b never saw the third order
        await bk.publish_result(a, "a", full)
        await bk.publish_result(b, "b", partial)
        with caplog.at_level(logging.WARNING, logger="microgrid.market.clearing"):
            cmp = await bk.compare_with_peers(a, "a", full)
        assert not cmp.unanimous and cmp.disagree[0].peer == "b"
        # b's published order list shows what it lacked, by hash prefix.
        assert cmp.disagree[0].missing_there == (sos[2].hash,) and cmp.disagree[0].missing_here == ()
        assert "disagrees with peer b" in caplog.text and "orders they lacked 1" in caplog.text
        await a.put(bk.result_key("zone-a", START), b"junk", 60)
        back = await bk.compare_with_peers(b, "b", partial)
        assert back.disagree[0].peer == "a" and back.disagree[0].missing_here == (sos[2].hash[:8],)
    asyncio.run(go())


def test_value_bytes_reads_records_and_bytes() -> None:
    class Rec:
        body = b"xyz"
        publisher_id = "p"
    assert bk.value_bytes(Rec()) == b"xyz" and bk.value_bytes(b"ab") == b"ab"
    with pytest.raises(TypeError, match="expected bytes"):
        bk.value_bytes(3)


# -- the coordinator/overlay implementations, when present ----------------------


def _memory_overlay():  # type: ignore[no-untyped-def]
    try:
        from microgrid.coordinator.overlay.memory import MemoryNetwork, MemoryOverlay
    except ImportError:
        pytest.skip("coordinator/overlay not available")
    return MemoryNetwork, MemoryOverlay


def test_three_coordinators_agree_over_the_overlays_memory_implementation() -> None:
    MemoryNetwork, MemoryOverlay = _memory_overlay()

    async def go() -> None:
        clock = ManualClock(START - 1800)
        net = MemoryNetwork(clock=clock.now)
        overlays = [MemoryOverlay(KEYS[9 + i], net) for i in range(3)]
        for ov in overlays:
            await ov.start()
        try:
            books, cleared, comparisons, _ = await run_three(overlays, clock)
        finally:
            for ov in overlays:
                await ov.stop()
        assert [len(b) for b in books] == [3, 3, 3]
        assert cleared[0].encoded == cleared[1].encoded == cleared[2].encoded
        assert all(c.unanimous and len(c.agree) == 2 for c in comparisons)
    asyncio.run(go())


def test_result_lists_order_prefixes_only_while_they_fit_in_a_record() -> None:
    small = clear_interval([order(BUY, 10, 5, nonce=i) for i in range(3)], "zone-a", START)
    big = clear_interval([order(BUY, 10, 5, nonce=i) for i in range(bk.MAX_LISTED_ORDERS + 1)], "zone-a", START)
    r_small, r_big = bk.decode_result(bk.encode_result("p", small)), bk.decode_result(bk.encode_result("p", big))
    assert r_small is not None and r_small.prefixes == tuple(h[:8] for h in small.order_hashes)
    assert r_big is not None and r_big.prefixes is None and r_big.orders == bk.MAX_LISTED_ORDERS + 1
    assert len(bk.encode_result("p" * 64, clear_interval(
        [order(BUY, 10, 5, nonce=i) for i in range(bk.MAX_LISTED_ORDERS)], "zone-a", START))) <= 1536
    assert bk.decode_result(cbor2.dumps({"peer": "p", "hash": b"short", "orders": 1})) is None
