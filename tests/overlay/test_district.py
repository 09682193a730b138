"""A district of feeder zones (coordinator/market/district.py): each zone
clears its own book, publishes what is left upward, the district clears the
zones' offers, and each zone gives its share back to its own orders. Pure
logic first, then the one overlay key on real OpenDHT nodes."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import cbor2
import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.market.clearing import ZoneRules, clear_interval
from microgrid.coordinator.market.district import (
    MAX_STEPS, DistrictError, ZoneLots, ZoneOffer, allocate, allocate_lots, check_offer, choose_offers, clear_district,
    decode_offer, decode_slice, encode_slice, residuals, zone_offer)
from microgrid.coordinator.market.district_link import (
    RESULT_SLOT, all_keys, clearer_zones, lots_from, offer_key, publish_offer, publish_results, read_offers, result_key,
    result_slot, split_slices)
from microgrid.coordinator.market.orders import BUY, SELL, SignedOrder, make_order

from .conftest import eventually, start_nodes, stop_all

START = 1_750_000_500
T0 = START - 3600


def book(zone: str, spec: list[tuple[str, int, int]], seed: int = 0) -> list[SignedOrder]:
    """Orders (side, Wh, limit) of distinct owners in `zone`."""
    rng = random.Random(seed)
    return [make_order(PrivateKey(rng.randbytes(32)), side, zone, START, wh, limit, START + 900, i, T0 + i)
            for i, (side, wh, limit) in enumerate(spec)]


def cleared_zone(zone: str, spec: list[tuple[str, int, int]], rules: ZoneRules = ZoneRules(), seed: int = 0):  # type: ignore[no-untyped-def]
    orders = book(zone, spec, seed)
    return orders, clear_interval(orders, zone, START, rules=rules)


def test_zones_clear_locally_then_trade_their_leftovers_through_the_district() -> None:
    # A sunny feeder with cheap surplus, a shaded one with demand above it.
    sunny_o, sunny = cleared_zone("feeder-1", [(SELL, 4000, 40), (SELL, 3000, 60), (BUY, 1000, 100)], seed=1)
    shade_o, shade = cleared_zone("feeder-2", [(BUY, 2500, 120), (BUY, 2000, 70), (SELL, 500, 50)], seed=2)
    assert sunny.volume_wh == 1000 and shade.volume_wh == 500  # each zone first clears its own book
    offers = [zone_offer(sunny_o, sunny), zone_offer(shade_o, shade)]
    assert offers[0].asks == ((40, 3000), (60, 3000)) and offers[0].bids == ()
    assert offers[1].bids == ((120, 2000), (70, 2000)) and offers[1].asks == ()
    res = clear_district(offers, "district-a", START, 900)
    # 120 meets 40 (3000 left at 40 covers 2000), then 70 meets 40's last 1000 and 60's 1000
    assert [(t.seller_zone, t.buyer_zone, t.wh, t.price_sat_per_kwh) for t in res.trades] == [
        ("feeder-1", "feeder-2", 1000, 55), ("feeder-1", "feeder-2", 1000, 65), ("feeder-1", "feeder-2", 2000, 80)]
    assert res.net_wh("feeder-1") == 4000 == -res.net_wh("feeder-2")
    # Down: each zone gives its lots to its residual orders, never beyond a limit.
    for zone, orders, cl in (("feeder-1", sunny_o, sunny), ("feeder-2", shade_o, shade)):
        alloc = allocate(res, zone, orders, cl)
        rest = dict((so.hash, r) for so, r in residuals(orders, cl))
        by_hash = {so.hash: so for so in orders}
        assert sum(a.wh for a in alloc) == 4000
        for a in alloc:
            assert a.wh <= rest[a.order_hash]
            limit = by_hash[a.order_hash].order.limit_sat_per_kwh
            assert all((p <= limit) if a.side == BUY else (p >= limit) for p, _ in a.lots)
    sold = allocate(res, "feeder-1", sunny_o, sunny)
    # lots by price ascending go to the lowest asks first
    assert sorted((a.wh, a.msat) for a in sold) == [(1000, 80_000), (3000, 55_000 + 65_000 + 80_000)]
    # The same offers in any order give the same bytes.
    assert clear_district(offers[::-1], "district-a", START, 900).hash == res.hash


def test_connection_caps_bound_each_zone_and_no_zone_trades_with_itself() -> None:
    # feeder-1's own feeder limit (500 Wh) leaves its bid above its ask: the
    # district must not match them with each other.
    f1_o, f1 = cleared_zone("feeder-1", [(SELL, 3000, 30), (BUY, 3000, 90)], ZoneRules(capacity_wh=500), seed=3)
    assert f1.binding and f1.volume_wh == 500
    f2_o, f2 = cleared_zone("feeder-2", [(BUY, 5000, 80)], seed=4)
    f3_o, f3 = cleared_zone("feeder-3", [(SELL, 1000, 85)], seed=5)
    offers = [zone_offer(f1_o, f1, export_cap_wh=1200), zone_offer(f2_o, f2), zone_offer(f3_o, f3)]
    res = clear_district(offers, "d", START, 900)
    assert all(t.seller_zone != t.buyer_zone for t in res.trades)
    assert sum(t.wh for t in res.trades if t.seller_zone == "feeder-1") == 1200  # its export cap
    assert [(t.seller_zone, t.buyer_zone, t.wh) for t in res.trades] == [
        ("feeder-1", "feeder-2", 1200), ("feeder-3", "feeder-1", 1000)]
    # an import cap of 0 shuts a zone out as a buyer
    capped = [zone_offer(f1_o, f1, export_cap_wh=1200, import_cap_wh=0), offers[1], offers[2]]
    assert all(t.buyer_zone != "feeder-1" for t in clear_district(capped, "d", START, 900).trades)


def test_many_prices_merge_into_bounded_steps_that_never_break_a_limit() -> None:
    spec = [(SELL, 10 + i, 100 + i) for i in range(300)] + [(BUY, 10 + i, 99 - i % 90) for i in range(300)]
    orders, cl = cleared_zone("big", spec, seed=6)
    offer = zone_offer(orders, cl)
    assert len(offer.asks) == MAX_STEPS and len(offer.bids) <= MAX_STEPS
    assert sum(w for _, w in offer.asks) == sum(r for so, r in residuals(orders, cl) if so.side == SELL)
    assert len(offer.encode()) < 1536  # fits an overlay record body
    assert decode_offer(offer.encode()) == offer
    buyer_o, buyer = cleared_zone("town", [(BUY, 100_000, 1000)], seed=7)
    res = clear_district([offer, zone_offer(buyer_o, buyer)], "d", START, 900)
    assert res.net_wh("big") == sum(w for _, w in offer.asks)
    alloc = allocate(res, "big", orders, cl)
    limits = {so.hash: so.order.limit_sat_per_kwh for so in orders}
    assert sum(a.wh for a in alloc) == res.net_wh("big")
    assert all(p >= limits[a.order_hash] for a in alloc for p, _ in a.lots)


def test_hostile_offers_are_refused_with_a_reason() -> None:
    orders, cl = cleared_zone("feeder-1", [(SELL, 1000, 40)], seed=8)
    good = zone_offer(orders, cl)
    m = cbor2.loads(good.encode())
    bad = {
        "not cbor": b"\xff\x00",
        "a list": cbor2.dumps([1, 2]),
        "unknown field": cbor2.dumps(dict(m, extra=1), canonical=True),
        "not canonical": cbor2.dumps(dict(reversed(list(m.items())))),
        "bad zone": cbor2.dumps(dict(m, zone="Feeder 1!"), canonical=True),
        "short hash": cbor2.dumps(dict(m, book=b"x"), canonical=True),
        "zero Wh": cbor2.dumps(dict(m, asks=[[40, 0]]), canonical=True),
        "unsorted": cbor2.dumps(dict(m, asks=[[50, 1], [40, 1]]), canonical=True),
        "too many": cbor2.dumps(dict(m, asks=[[i, 1] for i in range(MAX_STEPS + 1)]), canonical=True),
        "negative cap": cbor2.dumps(dict(m, exp=-1), canonical=True),
        "bool Wh": cbor2.dumps(dict(m, asks=[[40, True]]), canonical=True),
    }
    for name, data in bad.items():
        with pytest.raises(DistrictError):
            decode_offer(data)
            pytest.fail(name)
    # two offers of one zone, or one of another interval: refused, not merged
    with pytest.raises(DistrictError):
        clear_district([good, good], "d", START, 900)
    with pytest.raises(DistrictError):
        clear_district([good], "d", START + 900, 900)
    # lots cleared for another book of the zone do not get allocated
    other_o, other = cleared_zone("feeder-1", [(SELL, 2000, 40)], seed=9)
    b_o, b = cleared_zone("feeder-2", [(BUY, 5000, 90)], seed=10)
    res = clear_district([zone_offer(other_o, other), zone_offer(b_o, b)], "d", START, 900)
    with pytest.raises(DistrictError):
        allocate(res, "feeder-1", orders, cl)
    assert allocate(res, "feeder-9", orders, cl) == []  # a zone that took no part gets nothing


class Rec:
    """A read record as the overlay returns it (publisher, slot, body)."""

    def __init__(self, publisher: bytes, body: bytes, slot: str = RESULT_SLOT) -> None:
        self.publisher, self.body, self.slot = publisher, body, slot


def test_results_come_back_in_slices_and_a_zone_takes_what_most_clearers_agree_on() -> None:
    sunny_o, sunny = cleared_zone("feeder-1", [(SELL, 4000, 40), (BUY, 1000, 100)], seed=13)
    shade_o, shade = cleared_zone("feeder-2", [(BUY, 2500, 120)], seed=14)
    res = clear_district([zone_offer(sunny_o, sunny), zone_offer(shade_o, shade)], "d", START, 900)
    h, start, lots = decode_slice(encode_slice(res, ["feeder-1", "feeder-2", "feeder-9"]))
    assert (h, start, set(lots)) == (res.hash, START, {"feeder-1", "feeder-2"})
    # the lots from a slice allocate exactly as the whole result does
    assert allocate_lots(lots["feeder-1"], sunny_o, sunny) == allocate(res, "feeder-1", sunny_o, sunny)
    assert allocate_lots(lots["feeder-2"], shade_o, shade) == allocate(res, "feeder-2", shade_o, shade)
    # Three clearers: one lies; an outsider and junk are ignored; the majority wins.
    honest = encode_slice(res, ["feeder-1"])
    lie = ZoneLots("feeder-1", lots["feeder-1"].book_hash, ((10**6, 2500),), ())
    forged = cbor2.loads(honest)
    forged["zones"]["feeder-1"][1] = [[10**6, 2500]]
    forged_body = cbor2.dumps(forged, canonical=True)
    c1, c2, c3, outsider = (bytes([2]) + bytes([i]) * 32 for i in range(4))
    clearers = {c1, c2, c3}
    recs = [Rec(c1, honest), Rec(c2, forged_body), Rec(outsider, forged_body), Rec(outsider, forged_body),
            Rec(c3, b"junk"), Rec(c3, honest), Rec(c2, honest, slot="other")]
    got = lots_from(recs, "feeder-1", START, clearers.__contains__)
    assert got == lots["feeder-1"] and got != lie
    assert lots_from(recs, "feeder-1", START + 900, clearers.__contains__) is None  # another interval
    assert lots_from([Rec(outsider, honest)], "feeder-1", START, clearers.__contains__) is None
    for bad in (b"\xff", cbor2.dumps({"v": 1}), cbor2.dumps(dict(cbor2.loads(honest), hash=b"x")),
                cbor2.dumps(dict(cbor2.loads(honest), zones={"feeder-1": [b"x" * 32, [[1, 0]], []]}))):
        with pytest.raises(DistrictError):
            decode_slice(bad)
    # Clearers rotate with the interval, the same on every coordinator.
    zones = [f"feeder-{i}" for i in range(20)]
    assert clearer_zones(zones, START) == clearer_zones(list(reversed(zones)), START)
    assert len(clearer_zones(zones, START)) == 3
    assert any(clearer_zones(zones, START + 900 * k) != clearer_zones(zones, START) for k in range(1, 5))


def test_a_slice_too_big_for_one_record_continues_in_numbered_slots() -> None:
    # Found at 10,000 households: 17 zones' lots in one district shard made
    # a 1,562-byte slice, over a record body.
    sunny_o, sunny = cleared_zone("feeder-1", [(SELL, 4000, 40), (BUY, 1000, 100)], seed=13)
    shade_o, shade = cleared_zone("feeder-2", [(BUY, 2500, 120)], seed=14)
    res = clear_district([zone_offer(sunny_o, sunny), zone_offer(shade_o, shade)], "d", START, 900)
    whole = encode_slice(res, ["feeder-1", "feeder-2"])
    parts = split_slices(res, ["feeder-2", "feeder-1"], limit=len(whole) - 1)
    assert len(parts) == 2 and all(len(p) < len(whole) for p in parts)
    c1 = bytes([2]) + bytes([1]) * 32
    recs = [Rec(c1, body, slot=result_slot(k)) for k, body in enumerate(parts)]
    assert [r.slot for r in recs] == ["result", "result/1"]
    for z in ("feeder-1", "feeder-2"):
        assert lots_from(recs, z, START, {c1}.__contains__) == decode_slice(whole)[2][z]
    assert split_slices(res, ["feeder-1", "feeder-2"]) == [whole]  # fits: one record, as before
    with pytest.raises(DistrictError, match="alone exceed"):
        split_slices(res, ["feeder-1"], limit=20)


def test_a_zone_offer_is_what_most_of_its_coordinators_published() -> None:
    orders, cl = cleared_zone("feeder-1", [(SELL, 1000, 40)], seed=11)
    honest = zone_offer(orders, cl)
    faulty = ZoneOffer(honest.zone, START, 900, honest.book_hash, ((1, 10**9),), (), honest.export_cap_wh,
                       honest.import_cap_wh)
    impostor = ZoneOffer("feeder-2", START, 900, honest.book_hash, ((1, 10**9),), (), 0, 0)
    for votes in itertools.permutations([("feeder-1", honest), ("feeder-1", faulty), ("feeder-1", honest),
                                         ("feeder-1", impostor)]):
        chosen = choose_offers(votes)
        assert chosen == {"feeder-1": honest}  # a member of feeder-1 cannot speak for feeder-2
    assert check_offer(faulty, honest) == ["asks"] and check_offer(honest, honest) == []


def test_zones_meet_through_one_district_key_on_real_nodes() -> None:
    """Two zones of two coordinators and an outsider on OpenDHT: each
    coordinator reads the district key only (its own zone's book it cleared
    itself), and
    all four clear the same district result; the outsider's offer and junk
    under the district key change nothing."""

    async def go() -> None:
        nodes = await start_nodes(5, get_timeout_s=5.0)
        try:
            a1, a2, b1, b2, outsider = nodes
            zone_of_node = {a1.public_key: "feeder-1", a2.public_key: "feeder-1",
                            b1.public_key: "feeder-2", b2.public_key: "feeder-2"}
            start = (int(time.time()) // 900 + 4) * 900
            specs = {"feeder-1": [(SELL, 4000, 40), (BUY, 1000, 100)], "feeder-2": [(BUY, 3000, 120)]}
            rng = random.Random(12)
            books = {z: [make_order(PrivateKey(rng.randbytes(32)), side, z, start, wh, lim, start + 900, i,
                                    int(time.time()))
                         for i, (side, wh, lim) in enumerate(spec)] for z, spec in specs.items()}
            read_keys: list[str] = []
            for n in nodes[:4]:
                orig = n.get

                async def logged(key, timeout_s=None, *, publishers=None, _orig=orig):  # type: ignore[no-untyped-def]
                    read_keys.append(key)
                    return await _orig(key, timeout_s, publishers=publishers)
                n.get = logged  # type: ignore[method-assign]
            for n in nodes[:4]:  # each clears its zone's own book and publishes the offer
                zone = zone_of_node[n.public_key]
                cl = clear_interval(books[zone], zone, start)
                # As a coordinator does, publish again when a put is not
                # confirmed (a young network on a loaded machine can miss one).
                offer = zone_offer(books[zone], cl)
                assert await eventually(lambda n=n, offer=offer: publish_offer(n, "district-a", offer, shards=3),
                                        timeout=30, step=0.5)
            fake = ZoneOffer("feeder-1", start, 900, b"\x00" * 32, ((1, 10**9),), (), 10**9, 10**9)
            for key in all_keys("district-a", start, 3):
                await outsider.put(key, fake.encode(), 600, slot="zone:feeder-1")
                await outsider.put_raw(key, b"junk" * 50, 600)
            results = []
            for n in nodes[:4]:
                offers = await read_offers(n, "district-a", start, zone_of_node.get, shards=3)
                assert set(offers) == {"feeder-1", "feeder-2"}
                results.append(clear_district(offers.values(), "district-a", start, 900))
            assert len({r.hash for r in results}) == 1
            assert [(t.seller_zone, t.buyer_zone, t.wh) for t in results[0].trades] == [("feeder-1", "feeder-2", 3000)]
            # a1 clears for the district and publishes the slices; b2 reads its zone's lots
            assert await eventually(lambda: publish_results(a1, "district-a", results[0], ["feeder-1", "feeder-2"],
                                                            shards=3), timeout=30, step=0.5)
            key = result_key("district-a", start, "feeder-2", 3)
            lots = lots_from(await b2.get(key), "feeder-2", start, {a1.public_key}.__contains__)
            assert lots is not None and list(lots.bought) == results[0].lots("feeder-2")[1]
            assert set(read_keys) == set(all_keys("district-a", start, 3)) | {key}  # no zone's orders or meter totals
            assert {offer_key("district-a", start, z, 3) for z in specs} <= set(read_keys)
        finally:
            await stop_all(nodes)

    asyncio.run(go())


def test_a_zone_reads_a_majority_of_clearers_first_and_the_rest_only_when_they_disagree() -> None:
    from microgrid.coordinator.market.district_link import read_lots
    from microgrid.coordinator.overlay import MemoryNetwork, MemoryOverlay

    sunny_o, sunny = cleared_zone("feeder-1", [(SELL, 4000, 40), (BUY, 1000, 100)], seed=13)
    shade_o, shade = cleared_zone("feeder-2", [(BUY, 2500, 120)], seed=14)
    res = clear_district([zone_offer(sunny_o, sunny), zone_offer(shade_o, shade)], "d", START, 900)
    forged = cbor2.loads(encode_slice(res, ["feeder-1", "feeder-2"]))
    forged["zones"]["feeder-2"][2] = [[10**6, 2500]]

    async def go(liar: int) -> tuple[ZoneLots | None, list[int]]:
        net = MemoryNetwork(lambda: float(START))
        nodes = [MemoryOverlay(PrivateKey(bytes(31) + bytes([60 + i])), net) for i in range(4)]
        for n in nodes:
            await n.start()
        for i, c in enumerate(nodes[:3]):
            if i == liar:
                await c.put(result_key("d", START, "feeder-2", 2), cbor2.dumps(forged, canonical=True), 600,
                            slot=RESULT_SLOT)
            else:
                await publish_results(c, "d", res, ["feeder-1", "feeder-2"], shards=2)
        reader = nodes[3]
        asked: list[int] = []
        orig = reader.get

        async def counted(key, timeout_s=None, *, publishers=None):  # type: ignore[no-untyped-def]
            asked.append(len(publishers or []))
            return await orig(key, timeout_s, publishers=publishers)
        reader.get = counted  # type: ignore[method-assign]
        lots = await read_lots(reader, "d", START, "feeder-2", [n.public_key for n in nodes[:3]], shards=2)
        return lots, asked

    want = decode_slice(encode_slice(res, ["feeder-2"]))[2]["feeder-2"]
    assert asyncio.run(go(liar=2)) == (want, [2])  # the first two agree: the third is not read
    assert asyncio.run(go(liar=0)) == (want, [2, 1])  # they disagree: the third decides
    with pytest.raises(DistrictError, match="prefix"):
        decode_slice(cbor2.dumps(dict(cbor2.loads(encode_slice(res, ["feeder-2"])),
                                      zones={"feeder-2": [shade.hash, [], []]}), canonical=True))
