"""MemoryOverlay: the in-memory stand-in others unit-test against behaves
like the real overlay (same signing, filtering, expiry, listen rules)."""

from __future__ import annotations

import asyncio

import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.overlay import MemoryNetwork, MemoryOverlay, OverlayError, RecordError, records


class Clock:
    def __init__(self, t: float = 1_750_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def pair(clock: Clock | None = None) -> tuple[MemoryOverlay, MemoryOverlay, MemoryNetwork]:
    net = MemoryNetwork(clock or Clock())
    a, b = MemoryOverlay(PrivateKey.from_random(), net), MemoryOverlay(PrivateKey.from_random(), net)
    await a.start()
    await b.start()
    return a, b, net


def test_record_put_by_one_member_is_found_by_another_signed_by_the_first() -> None:
    async def go() -> None:
        a, b, _ = await pair()
        assert await a.put("dir/z1", b"a's entry", 600)
        got = await b.get("dir/z1")
        assert [(r.body, r.publisher) for r in got] == [(b"a's entry", a.public_key)]
        assert [p.node_id for p in a.peers()] == [b.publisher_id]
    asyncio.run(go())


def test_forged_and_junk_values_never_reach_the_reader() -> None:
    async def go() -> None:
        a, b, _ = await pair()
        raw = records.sign(a.signing_key, "dir/z1", b"real", 1, int(a.clock()), 60)
        await b.put_raw("dir/z1", raw.replace(b"real", b"fake"), 60)
        await b.put_raw("dir/z1", b"junk", 60)
        await b.put_raw("dir/z2", raw, 60)  # a's record copied under another key
        assert await b.get("dir/z1") == [] and await b.get("dir/z2") == []
        assert b.counts["rejected"] == 3
    asyncio.run(go())


def test_records_disappear_at_their_expiry() -> None:
    async def go() -> None:
        clock = Clock()
        a, b, _ = await pair(clock)
        await a.put("k", b"short", 30)
        clock.t += 29
        assert len(await b.get("k")) == 1
        clock.t += 1
        assert await b.get("k") == []
    asyncio.run(go())


def test_newer_put_supersedes_older_for_readers_and_listeners() -> None:
    async def go() -> None:
        a, b, _ = await pair()
        seen: list[bytes] = []
        handle = b.listen("k", lambda r: seen.append(r.body))
        await a.put("k", b"v1", 60)
        await a.put("k", b"v2", 60)
        await a.put("k", b"order", 60, slot="o1")
        await asyncio.sleep(0)
        assert sorted(r.body for r in await b.get("k")) == [b"order", b"v2"]
        assert seen == [b"v1", b"v2", b"order"]
        handle.cancel()
        await a.put("k", b"v3", 60)
        await asyncio.sleep(0)
        assert seen == [b"v1", b"v2", b"order"]
    asyncio.run(go())


def test_listen_delivers_records_already_there() -> None:
    async def go() -> None:
        a, b, _ = await pair()
        await a.put("k", b"before", 60)
        seen: list[bytes] = []
        b.listen("k", lambda r: seen.append(r.body))
        await asyncio.sleep(0)
        assert seen == [b"before"]
    asyncio.run(go())


def test_stopped_overlay_refuses_use_and_bad_ttl_is_refused() -> None:
    async def go() -> None:
        a, _, _ = await pair()
        with pytest.raises(RecordError):
            await a.put("k", b"x", 0)
        await a.stop()
        with pytest.raises(OverlayError, match="not running"):
            await a.get("k")
    asyncio.run(go())


def test_a_publisher_flooding_listeners_is_cut_to_the_stated_rate_and_others_still_get_through() -> None:
    async def go() -> None:
        clock = Clock()
        a, b, net = await pair(clock)
        heard: list[bytes] = []
        b.listen("orders/z1/1", lambda r: heard.append(r.publisher))
        await asyncio.sleep(0)
        # 300 versions of one record in 10 s of the overlay's clock.
        for i in range(300):
            clock.t += 10 / 300
            await a.put("orders/z1/1", b"o%d" % i, 600, slot="o")
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        from_a = heard.count(a.public_key)
        allowed = records.LISTEN_BURST + 10 * records.LISTEN_RATE_PER_S
        assert allowed - 2 <= from_a <= allowed + 1, from_a
        assert b.counts["rate_limited"] == 300 - from_a
        # Another publisher is not held back by the flooder's budget ...
        c = MemoryOverlay(PrivateKey.from_random(), net)
        await c.start()
        await c.put("orders/z1/1", b"c's order", 600, slot="c")
        await asyncio.sleep(0.05)
        assert heard[-1] == c.public_key
        # ... a get still returns the flooder's newest version ...
        assert {r.body for r in await b.get("orders/z1/1")} == {b"o299", b"c's order"}
        # ... and once it slows down, its records reach listeners again.
        clock.t += 60
        await a.put("orders/z1/1", b"later", 600, slot="o")
        await asyncio.sleep(0.05)
        assert heard[-1] == a.public_key
    asyncio.run(go())


def test_a_version_stored_briefly_leaves_the_nodes_but_not_the_readers_that_saw_it() -> None:
    async def go() -> None:
        clock = Clock()
        a, b, net = await pair(clock)
        c = MemoryOverlay(PrivateKey.from_random(), net)
        await c.start()
        for v in range(5):  # a live total republished every 60 s, each version kept 120 s
            assert await a.put("mg/live/z/1750000000", b"v%d" % v, 3600, store_s=120)
            assert [r.body for r in await b.get("mg/live/z/1750000000", publishers=[a.public_key])] == [b"v%d" % v]
            assert len(net.load("mg/live/z/1750000000")) == min(v + 1, 2)  # older versions left the nodes
            clock.t += 60
        clock.t += 200  # no new version for a while: the nodes hold none
        assert net.load("mg/live/z/1750000000") == []
        assert [r.body for r in await b.get("mg/live/z/1750000000", publishers=[a.public_key])] == [b"v4"]
        assert await c.get("mg/live/z/1750000000") == []  # a reader that never saw it
        for bad in (0, 3601, True, 1.5):
            with pytest.raises(RecordError, match="store_s"):
                await a.put("mg/live/z/1750000000", b"x", 3600, store_s=bad)  # type: ignore[arg-type]
    asyncio.run(go())
