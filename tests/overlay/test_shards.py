"""District shards between feeder zones and the district
(coordinator/market/shards.py): each shard clears its zones' offers, offers
the district what is left, and gives the district's lots back to its zones.
Properties of the pure rules, then the three levels over the overlay's
interface, each coordinator reading only its level's records."""

from __future__ import annotations

import asyncio
import random

import pytest
from bitcoinx import PrivateKey
from hypothesis import given, settings, strategies as st

from microgrid.coordinator.market.clearing import clear_interval
from microgrid.coordinator.market.district import (
    MAX_WH, DistrictError, ZoneLots, ZoneOffer, allocate_lots, clear_district, zone_offer)
from microgrid.coordinator.market.district_link import (
    all_keys, clearer_zones, offers_from, publish_offer, publish_results, publish_zone_lots, read_lots, read_result, shard_of)
from microgrid.coordinator.market.orders import BUY, SELL, make_order
from microgrid.coordinator.market.shards import (
    clear_in_shards, leftovers, levels_hash, shard_name, shard_offer, split_lots, zone_lots)
from microgrid.coordinator.overlay import MemoryNetwork, MemoryOverlay

START = 1_750_000_500
BOOK = bytes(range(32))


def offer(zone: str, asks: list[tuple[int, int]], bids: list[tuple[int, int]], exp: int = MAX_WH,
          imp: int = MAX_WH) -> ZoneOffer:
    return ZoneOffer(zone, START, 900, BOOK, tuple(sorted(asks)), tuple(sorted(bids, reverse=True)), exp, imp)


@st.composite
def offers(draw: st.DrawFn) -> list[ZoneOffer]:
    out = []
    for z in range(draw(st.integers(1, 12))):
        def steps() -> list[tuple[int, int]]:
            prices = draw(st.lists(st.integers(0, 300), max_size=6, unique=True))
            return [(p, draw(st.integers(1, 5000))) for p in prices]
        caps = draw(st.sampled_from([MAX_WH, None]))
        exp = MAX_WH if caps else draw(st.integers(0, 8000))
        imp = MAX_WH if caps else draw(st.integers(0, 8000))
        out.append(offer(f"feeder-{z}", steps(), steps(), exp, imp))
    return out


def fits(lots: tuple[tuple[int, int], ...], steps: tuple[tuple[int, int], ...], sell: bool) -> bool:
    """Can each lot be given to steps that accept its price (greedy, lots
    and steps from the most accepting end)?"""
    rest = [w for _, w in steps]
    for price, wh in lots:
        for k, (p, _) in enumerate(steps):
            if (p > price) if sell else (p < price):
                break
            q = min(rest[k], wh)
            rest[k] -= q
            wh -= q
        if wh:
            return False
    return True


@settings(max_examples=150, deadline=None)
@given(offers(), st.integers(1, 5))
def test_every_lot_fits_a_step_that_accepts_its_price_and_caps_hold(zone_offers: list[ZoneOffer], shards: int) -> None:
    lots = clear_in_shards(zone_offers, shards, "d", START, 900)
    assert set(lots) == {o.zone for o in zone_offers}
    for o in zone_offers:
        zl = lots[o.zone]
        assert fits(zl.sold, o.asks, True) and fits(zl.bought, o.bids, False)
        assert sum(w for _, w in zl.sold) <= o.export_cap_wh and sum(w for _, w in zl.bought) <= o.import_cap_wh
        assert list(zl.sold) == sorted(zl.sold) and list(zl.bought) == sorted(zl.bought, reverse=True)
    # Energy and money balance: every Wh sold is bought at the same price.
    sold = sorted(x for zl in lots.values() for x in zl.sold)
    bought = sorted(x for zl in lots.values() for x in zl.bought)
    assert sum(w for _, w in sold) == sum(w for _, w in bought)
    assert sum(p * w for p, w in sold) == sum(p * w for p, w in bought)
    # Deterministic: the same offers in any order.
    assert clear_in_shards(list(reversed(zone_offers)), shards, "d", START, 900) == lots


@settings(max_examples=80, deadline=None)
@given(offers())
def test_one_shard_gives_exactly_the_single_district_level(zone_offers: list[ZoneOffer]) -> None:
    single = clear_district(zone_offers, "d", START, 900)
    lots = clear_in_shards(zone_offers, 1, "d", START, 900)
    for o in zone_offers:
        assert (list(lots[o.zone].sold), list(lots[o.zone].bought)) == single.lots(o.zone)


def test_a_shard_trades_what_its_zones_left_and_no_zone_or_shard_trades_with_itself() -> None:
    zones = {z: shard_of(z, 2) for z in (f"feeder-{i}" for i in range(8))}
    a, b = sorted(z for z, k in zones.items() if k == 0)[:2]
    c = next(z for z, k in zones.items() if k == 1)
    o_a = offer(a, [(40, 3000)], [(90, 500)], exp=2500)  # its own bid above its ask: never with itself
    o_b = offer(b, [], [(70, 1000)])
    o_c = offer(c, [(20, 400)], [(100, 2000)])
    lots = clear_in_shards([o_a, o_b, o_c], 2, "d", START, 900)
    # In shard 0, b's bid meets a's ask at 55; what a has left (1500 Wh of
    # its 2,500 Wh cap) goes to c in the district, at the midpoint of a's
    # ask and c's bid (70); a's bid buys c's 400 Wh at 55.
    assert lots[b].bought == ((55, 1000),)
    assert sorted(lots[a].sold) == [(55, 1000), (70, 1500)] and lots[a].bought == ((55, 400),)
    assert lots[c].bought == ((70, 1500),) and lots[c].sold == ((55, 400),)
    res = clear_district([o_a, o_b], shard_name(0), START, 900)
    left = leftovers([o_a, o_b], res)
    assert left[a].asks == ((40, 1500),) and left[a].export_cap_wh == 1500 and left[b].bids == ()
    up = shard_offer(0, left, res)
    assert (up.zone, up.book_hash, up.asks, up.bids) == (shard_name(0), res.hash, ((40, 1500),), ((90, 500),))


def test_district_lots_that_fit_no_zone_step_or_another_clearing_are_refused() -> None:
    o = offer("feeder-1", [(40, 1000)], [])
    res = clear_district([o], shard_name(0), START, 900)
    left = leftovers([o], res)
    with pytest.raises(DistrictError, match="find no zone step"):
        split_lots(ZoneLots(shard_name(0), res.hash, ((30, 500),), ()), left)  # below the ask's limit
    with pytest.raises(DistrictError, match="find no zone step"):
        split_lots(ZoneLots(shard_name(0), res.hash, ((50, 1001),), ()), left)  # more than it has
    with pytest.raises(DistrictError, match="another offer"):
        zone_lots({"feeder-1": o}, res, ZoneLots(shard_name(0), b"\x01" * 8, ((50, 10),), ()))
    assert zone_lots({"feeder-1": o}, res, None)["feeder-1"].sold == ()


def test_the_levels_allocate_to_real_orders_within_every_limit() -> None:
    rng = random.Random(5)
    zones = [f"feeder-{i}" for i in range(10)]
    books, cleared, zone_offers = {}, {}, []
    for z in zones:
        orders = [make_order(PrivateKey(rng.randbytes(32)), rng.choice((BUY, SELL)), z, START,
                             rng.randrange(100, 3000), rng.randrange(30, 200), START + 900, i, START - 3600 + i)
                  for i in range(12)]
        books[z], cleared[z] = orders, clear_interval(orders, z, START)
        zone_offers.append(zone_offer(orders, cleared[z], max_steps=4))
    lots = clear_in_shards(zone_offers, 3, "d", START, 900, max_steps=4)
    traded = 0
    for z in zones:
        limits = {so.hash: so.order.limit_sat_per_kwh for so in books[z]}
        for a in allocate_lots(lots[z], books[z], cleared[z]):
            traded += a.wh
            fee = cleared[z].rules.grid_fee_sat_per_kwh
            assert all((p <= limits[a.order_hash] - fee) if a.side == BUY else (p >= limits[a.order_hash])
                       for p, _ in a.lots)
    assert traded > 0


def test_three_levels_over_the_overlay_each_reader_at_its_own_level() -> None:
    """Six zones in two shards on the in-memory overlay: each zone's first
    coordinator publishes its offer; each shard's clearers read only their
    shard's key, the district's only the top key; every zone ends with the
    lots clear_in_shards gives, read from its shard's clearers."""
    zones = [f"feeder-{i}" for i in range(6)]
    shards = 2
    rng = random.Random(9)
    zone_offers = {z: offer(z, [(rng.randrange(20, 80), rng.randrange(500, 3000))],
                            [(rng.randrange(60, 150), rng.randrange(500, 3000))]) for z in zones}
    want = clear_in_shards(zone_offers.values(), shards, "d", START, 900)

    async def go() -> dict[str, ZoneLots | None]:
        net = MemoryNetwork(lambda: float(START))
        # per zone: a publisher and a clearer; 3 district clearers besides
        pub = {z: MemoryOverlay(PrivateKey(bytes(31) + bytes([10 + i])), net) for i, z in enumerate(zones)}
        clr = {z: MemoryOverlay(PrivateKey(bytes(31) + bytes([40 + i])), net) for i, z in enumerate(zones)}
        top = [MemoryOverlay(PrivateKey(bytes(31) + bytes([80 + i])), net) for i in range(3)]
        for n in [*pub.values(), *clr.values(), *top]:
            await n.start()
        read: dict[int, set[str]] = {}
        for n in [*clr.values(), *top]:
            orig = n.get

            async def logged(key, timeout_s=None, *, publishers=None, _o=orig, _n=n):  # type: ignore[no-untyped-def]
                read.setdefault(id(_n), set()).add(key)
                return await _o(key, timeout_s, publishers=publishers)
            n.get = logged  # type: ignore[method-assign]
        for z in zones:
            await publish_offer(pub[z], "d", zone_offers[z], shards)
        zone_of = {pub[z].public_key: z for z in zones}
        by_shard = {k: [z for z in zones if shard_of(z, shards) == k] for k in range(shards)}
        shard_clearers = {k: [clr[z] for z in clearer_zones(zs, START)] for k, zs in by_shard.items()}
        clears_shard = {n.public_key: shard_name(k) for k, ns in shard_clearers.items() for n in ns}
        results = {}
        for k, ns in shard_clearers.items():
            for n in ns:  # level 1 -> 2: the shard's own clearing, its leftovers upward
                recs = await n.get(all_keys("d", START, shards)[k])
                got = offers_from(recs, START, zone_of.get)
                assert set(got) == set(by_shard[k])
                res = clear_district(got.values(), shard_name(k), START, 900)
                results[(k, n.public_key)] = (got, res)
                await publish_offer(n, "d", shard_offer(k, leftovers(got.values(), res), res), 1)
        for n in top:  # level 2: the district, from one offer per shard
            got = offers_from(await n.get(all_keys("d", START, 1)[0]), START, clears_shard.get)
            assert set(got) == {shard_name(k) for k in range(shards)}
            await publish_results(n, "d", clear_district(got.values(), "d", START, 900), got, 1)
        for k, ns in shard_clearers.items():  # down: the shard's share to its zones
            for n in ns:
                got, res = results[(k, n.public_key)]
                share = await read_result(n, "d", START, shard_name(k), [t.public_key for t in top], 1)
                assert share is not None
                lots = zone_lots(got, res, share[1])
                await publish_zone_lots(n, "d", START, 900, levels_hash(res, share[0]),
                                        lots, shards)
        for n in [*clr.values(), *top]:  # nobody read another level's key
            keys = read.get(id(n), set())
            assert keys <= set(all_keys("d", START, shards)) | set(all_keys("d", START, 1))
        for n in top:
            assert read[id(n)] == set(all_keys("d", START, 1))
        return {z: await read_lots(pub[z], "d", START, z, [c.public_key for c in shard_clearers[shard_of(z, shards)]],
                                   shards) for z in zones}

    got = asyncio.run(go())
    for z in zones:
        g = got[z]
        assert g is not None and (g.sold, g.bought) == (want[z].sold, want[z].bought)
    assert any(got[z].sold for z in zones if got[z] is not None)  # type: ignore[union-attr]
