"""Round records (coordinator/market/rounds.py): one signed record per
household and interval carries its meter total and its order; settling
coordinators read every member's, and hostile records change nothing."""

from __future__ import annotations

import asyncio
import random

import cbor2
import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.market.orders import BUY, SELL, make_order
from microgrid.coordinator.market.rounds import (
    MAX_ORDERS, SETTLED_SLOT, RoundError, RoundRecord, SettledRound, decode_round, decode_settled, households,
    make_round, meters_from, meters_hash, orders_from, orders_round, publish_round, publish_settled, read_round,
    round_key, settled_from)
from microgrid.coordinator.overlay import MemoryNetwork, MemoryOverlay
from microgrid.coordinator.overlay.records import MAX_BODY_BYTES

START = 1_750_000_500
NOW = START + 1000
ZONE = "feeder-3"


def _order(key: PrivateKey, interval: int = START + 1800, nonce: int = 0, side: str = BUY):  # type: ignore[no-untyped-def]
    return make_order(key, side, ZONE, interval, 1500, 120, interval + 900, nonce, NOW)


def test_a_round_record_round_trips_and_stays_inside_one_overlay_record() -> None:
    key = PrivateKey(bytes(31) + b"\x07")
    orders = [_order(key, nonce=n, side=s) for n, s in enumerate((BUY, SELL, BUY))]
    rec = make_round(START, 900, (1234, 56), orders)
    assert decode_round(rec.encode()) == rec
    assert rec.orders == tuple(o.encoded for o in orders)
    assert len(rec.encode()) < MAX_BODY_BYTES  # the most a household may put in one round
    assert orders_round(START + 1800, 900) == START
    assert round_key(ZONE, START) == f"mg/round/{ZONE}/{START}"
    # no meter total yet (a first interval): the field is absent
    assert decode_round(make_round(START, 900, None, orders[:1]).encode()).meter is None


@pytest.mark.parametrize("data, why", [
    (b"\xff", "not CBOR"),
    (cbor2.dumps([1, 2]), "expected a map"),
    (cbor2.dumps({"v": 2, "start": START, "len": 900, "orders": []}, canonical=True), "v=1"),
    (cbor2.dumps({"v": 1, "start": START, "len": 901, "orders": []}, canonical=True), "len=901"),
    (cbor2.dumps({"v": 1, "start": START + 1, "len": 900, "orders": []}, canonical=True), "multiple"),
    (cbor2.dumps({"v": 1, "start": START, "len": 900, "orders": [], "meter": [-1, 2]}, canonical=True), "meter"),
    (cbor2.dumps({"v": 1, "start": START, "len": 900, "orders": [], "meter": [True, 2]}, canonical=True), "meter"),
    (cbor2.dumps({"v": 1, "start": START, "len": 900, "orders": [b"x"] * (MAX_ORDERS + 1)}, canonical=True), "orders"),
    (cbor2.dumps({"v": 1, "start": START, "len": 900, "orders": [b"x" * 401]}, canonical=True), "orders"),
    (cbor2.dumps({"v": 1, "start": START, "len": 900, "orders": [], "extra": 1}, canonical=True), "unknown"),
    (cbor2.dumps({"orders": [], "v": 1, "start": START, "len": 900}), "canonical"),
])
def test_malformed_round_records_are_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(RoundError, match=why):
        decode_round(data)


class _Rec:
    def __init__(self, publisher: bytes, body: bytes, slot: str = "") -> None:
        self.publisher, self.body, self.slot = publisher, body, slot


def test_readers_keep_members_own_orders_and_totals_only() -> None:
    alice, bob, mallory = (PrivateKey(bytes(31) + bytes([i])) for i in (1, 2, 3))
    pub = {k: k.public_key.to_bytes(compressed=True) for k in (alice, bob, mallory)}
    recs = [
        _Rec(pub[alice], make_round(START, 900, (100, 0), [_order(alice)]).encode()),
        # bob relays alice's order in his record: not his to publish here
        _Rec(pub[bob], make_round(START, 900, (0, 200), [_order(alice, nonce=9), _order(bob)]).encode()),
        _Rec(pub[mallory], make_round(START, 900, (999, 999), [_order(mallory)]).encode()),  # not a member
        _Rec(pub[alice], make_round(START - 900, 900, (5, 5), []).encode()),  # another round: ignored
        _Rec(pub[bob], b"junk"),  # undecodable: ignored, bob's good one stays
        _Rec(pub[alice], SettledRound(START, 900, 2, bytes(32)).encode(), SETTLED_SLOT),  # not a household's
    ]
    members = {pub[alice], pub[bob]}.__contains__
    rounds = households(recs, START, 900, members)
    assert set(rounds) == {pub[alice], pub[bob]}
    assert meters_from(rounds) == {pub[alice]: (100, 0), pub[bob]: (0, 200)}
    assert sorted(so.order.owner for so in orders_from(rounds, START + 1800)) == sorted([pub[alice], pub[bob]])
    assert orders_from(rounds, START + 2700) == []
    settled = settled_from(recs, START)
    assert list(settled) == [pub[alice]] and settled[pub[alice]].meters == 2
    with pytest.raises(RoundError, match="canonical"):
        decode_settled(cbor2.dumps({"v": 1, "start": START, "len": 900, "meters": 2, "hash": bytes(32), "x": 0}))


def test_a_zone_publishes_one_record_each_and_every_settler_sees_every_total() -> None:
    async def go() -> None:
        net = MemoryNetwork(lambda: NOW)
        rng = random.Random(5)
        keys = [PrivateKey(rng.randbytes(32)) for _ in range(40)]
        nodes = [MemoryOverlay(k, net, shards=4) for k in keys]
        for n in nodes:
            await n.start()
        members = {n.public_key for n in nodes}.__contains__
        heard: dict[int, dict[bytes, object]] = {0: {}, 1: {}}
        handles = [nodes[s].listen(round_key(ZONE, START), lambda r, s=s: heard[s].__setitem__(r.publisher, r))
                   for s in (0, 1)]
        totals = {}
        for k, n in zip(keys, nodes):
            totals[n.public_key] = (rng.randrange(3000), rng.randrange(3000))
            assert await publish_round(n, ZONE, make_round(START, 900, totals[n.public_key], [_order(k)]))
        # an outsider's record under the zone's key changes nothing
        outsider = MemoryOverlay(PrivateKey(rng.randbytes(32)), net, shards=4)
        await outsider.start()
        await publish_round(outsider, ZONE, make_round(START, 900, (1, 1), []))
        await asyncio.sleep(0)
        assert len(net.values) == 4  # spread over the zone's shards, one value per household
        assert sum(len(v) for v in net.values.values()) == 41
        for s in (0, 1):
            handles[s].cancel()
            rounds = households(heard[s].values(), START, 900, members)  # type: ignore[arg-type]
            assert meters_from(rounds) == totals
            assert len(orders_from(rounds, START + 1800)) == 40
            settled = SettledRound(START, 900, len(totals), meters_hash(meters_from(rounds)))
            assert await publish_settled(nodes[s], ZONE, settled)
        # a late reader reads the same by get
        got = await read_round(nodes[7], ZONE, START, 900, members)
        assert meters_from(got) == totals
        both = settled_from(await nodes[7].get(round_key(ZONE, START)), START)
        assert {s.hash for s in both.values()} == {meters_hash(totals)} and len(both) == 2
    asyncio.run(go())


def test_round_record_dataclass_refuses_what_a_reader_would() -> None:
    with pytest.raises(RoundError):
        make_round(START, 900, (1, 2), [b"x"] * (MAX_ORDERS + 1))
    with pytest.raises(RoundError):
        round_key("Bad Zone", START)
    assert RoundRecord(START, 900, None, ()).encode() == cbor2.dumps(
        {"v": 1, "start": START, "len": 900, "orders": []}, canonical=True)


@pytest.mark.parametrize("trading_publishes", [True, False])
def test_market_services_with_round_records_clear_the_book_from_the_households_round_records(
        trading_publishes: bool) -> None:
    # [market] round_records: orders are not published on their own; each
    # household's round record (here published as trading does after the
    # interval two before ends) carries them, and every coordinator's
    # collector reads them from that round's key.
    from microgrid.coordinator.market.pricing import Forecast
    from microgrid.coordinator.market.service import MarketService
    from microgrid.coordinator.market.settings import MarketSettings

    from .overlay_stub import ManualClock

    async def go() -> None:
        x = START + 1800  # the traded interval; its orders ride in round START
        clock = ManualClock(x - 2000)
        net = MemoryNetwork(clock.now)
        homes = [({"sell": 70, "buy": 180}, 1500, 300), ({"sell": 90, "buy": 170}, 800, 400), ({"buy": 200}, 0, 1700)]
        keys = [PrivateKey(bytes(31) + bytes([40 + i])) for i in range(3)]

        async def sleep(s: float) -> None:
            await clock.sleep(min(s, 30.0))

        svcs, overlays = [], []
        for k, (prices, gen, cons) in zip(keys, homes):
            ov = MemoryOverlay(k, net, shards=2)
            await ov.start()
            overlays.append(ov)
            settings = MarketSettings(enabled=True, zone=ZONE, feeder_capacity_w=8000, grid_fee_sat_per_kwh=4,
                                      prices=prices, order_lead_s=1800, gate_lead_s=300, round_records=True).validate()
            svcs.append(MarketService(ov, k, settings, clock, lambda t, g=gen, c=cons: (Forecast(t, g, c), None),
                                      sleep=sleep, poll_s=60, result_wait_s=30))

        async def households_publish() -> None:
            # Without trading's record (a coordinator that started after the
            # round), each market published its orders alone at order time.
            if not trading_publishes:
                return
            while clock.now() < START + 900 + 120:  # the round's interval ended, plus the settle delay
                await asyncio.sleep(0)
            for i, (svc, ov) in enumerate(zip(svcs, overlays)):
                rec = make_round(START, 900, (100 * i, 10 * i), svc.rounds[x].own_orders)
                assert await publish_round(ov, ZONE, rec)

        *rnds, _ = await asyncio.gather(*(s.run_interval(x) for s in svcs), households_publish())
        assert clock.now() < x
        assert len({r.cleared.hash for r in rnds if r.cleared}) == 1
        assert [len(r.own_orders) for r in rnds] == [1, 1, 1] and all(len(r.book) == 3 for r in rnds)
        assert all(r.comparison is not None and r.comparison.unanimous for r in rnds)
        assert not [k for k in net.values if k.startswith("mg/market/")]  # no order went out on its own
        assert rnds[0].cleared is not None and rnds[0].cleared.volume_wh == 1600
        published = await read_round(overlays[0], ZONE, START, 900)
        assert len(published) == 3
        assert all((r.meter is not None) == trading_publishes and len(r.orders) == 1 for r in published.values())
    asyncio.run(go())


def test_round_records_settings_are_checked() -> None:
    from microgrid.coordinator.market.settings import MarketSettings, MarketSettingsError

    assert MarketSettings(enabled=True, zone=ZONE, round_records=True).validate().round_records
    with pytest.raises(MarketSettingsError, match="round_records"):
        MarketSettings(enabled=True, zone=ZONE, round_records="yes").validate()  # type: ignore[arg-type]
    with pytest.raises(MarketSettingsError, match="order_lead_s"):  # orders must be planned by the round's end
        MarketSettings(enabled=True, zone=ZONE, round_records=True, order_lead_s=600, gate_lead_s=300).validate()
