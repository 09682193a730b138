"""Repair, not just report: coordinators that cleared different books (an
order reaching some before the gate and others after it, deliveries lost)
fetch what they lack, drop what no quorum held, clear again and agree;
an interval no quorum agrees on is not settled, and says why."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.market import book as bk
from microgrid.coordinator.market.clearing import clear_interval
from microgrid.coordinator.market.orders import make_order
from microgrid.coordinator.market.pricing import Forecast
from microgrid.coordinator.market.repair import agreed_prefixes, quorum, quorum_hash
from microgrid.coordinator.market.service import MarketRound, MarketService
from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.market.settlement import Metered, SettlementError

from .helpers import START
from .lossy_overlay import LossyNetwork, LossyOverlay, VirtualTime

KEYS = [PrivateKey.from_int(5000 + i) for i in range(16)]
GATE = START - 300
ZONE = "zone-r"
HOMES = [  # (prices, generation Wh, consumption Wh) per interval
    ({"sell": 70, "buy": 180}, 1500, 300),
    ({"sell": 90, "buy": 170}, 800, 400),
    ({"buy": 200}, 0, 1700),
    ({"sell": 60, "buy": 160}, 1200, 0),
    ({"buy": 190}, 0, 900),
    ({"sell": 110, "buy": 175}, 600, 100),
]


def settings(prices: dict[str, Any]) -> MarketSettings:
    return MarketSettings(enabled=True, zone=ZONE, feeder_capacity_w=8000, grid_fee_sat_per_kwh=4, prices=prices,
                          order_lead_s=1800, gate_lead_s=300).validate()


async def zone(vt: VirtualTime, net: LossyNetwork, n: int = len(HOMES)) -> list[MarketService]:
    out = []
    for i, (prices, gen, cons) in enumerate(HOMES[:n]):
        ov = LossyOverlay(KEYS[i], net)
        await ov.start()
        out.append(MarketService(ov, KEYS[i], settings(prices), vt, lambda t, g=gen, c=cons: (Forecast(t, g, c), None),
                                 sleep=vt.sleep, poll_s=10, result_wait_s=30))
    return out


async def late_orders(vt: VirtualTime, net: LossyNetwork, before_gate_s: list[float]) -> list[bytes]:
    """Traders who publish just before the gate: with 500 ms delivery, each
    order reaches some coordinators before the gate and others after it."""
    hashes = []
    for j, dt in enumerate(before_gate_s):
        await vt.sleep(GATE - dt - vt.now())
        key = KEYS[10 + j % 6]
        ov = LossyOverlay(key, net)
        await ov.start()
        side, price = ("buy", 185) if j % 2 else ("sell", 80)
        so = make_order(key, side, ZONE, START, 200 + 10 * j, price, START + 900, j, int(vt.now()) - 5)
        assert await bk.publish_order(ov, so, vt.now())
        hashes.append(so.hash)
    return hashes


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_books_disagreeing_at_the_gate_agree_after_repair_under_delay_and_loss(seed: int) -> None:
    async def go() -> None:
        vt = VirtualTime(START - 2000)
        net = LossyNetwork(vt, seed, delay_s=0.5, jitter_s=0.25, loss=0.05)
        svcs = await zone(vt, net)
        *rounds, late = await vt.drive(*(s.run_interval(START) for s in svcs),
                                       late_orders(vt, net, [0.6, 0.5, 0.45, 0.4, 0.3, 0.2]))
        assert vt.now() < START  # repaired before the interval begins
        assert net.lost > 0  # the network did lose deliveries
        # The gate left them disagreeing: the test exercises the repair.
        repairs = [r.repair for r in rounds if r.repair is not None]
        assert sum(r.initial_disagreements for r in repairs) > 0
        assert sum(r.fetched + r.dropped for r in repairs) > 0
        # After the grace period: one book, held by every coordinator, and
        # no disagreement left in anyone's last comparison.
        assert len({r.cleared.hash for r in rounds if r.cleared}) == 1
        assert all(r.agreed for r in rounds)
        assert [len(r.comparison.disagree) for r in rounds if r.comparison] == [0] * len(svcs)
        # It is the book a quorum held at the gate: each late order is in
        # it exactly when more than half of the coordinators held it.
        held = {f"c{i}": (r.repair.held if r.repair else bk.prefixes_of(so.hash for so in r.book))
                for i, r in enumerate(rounds)}
        target = agreed_prefixes(held)
        book = rounds[0].book
        assert {so.hash[:8] for so in book} == target
        for h in late:
            votes = sum(h[:8] in v for v in held.values())
            assert (h in {so.hash for so in book}) == (votes >= quorum(len(svcs)))
        # Deterministic: clearing the agreed book again gives the same result,
        # and every coordinator settles it to the same payments.
        again = clear_interval(book, ZONE, START, 900, svcs[0].settings.rules())
        assert again.hash == rounds[0].cleared.hash  # type: ignore[union-attr]
        metered = [Metered(KEYS[i].public_key.to_bytes(compressed=True), g, c)
                   for i, (_, g, c) in enumerate(HOMES)]
        assert len({tuple(s.settle(START, metered).payments) for s in svcs}) == 1
    asyncio.run(go())


def test_an_order_no_quorum_held_at_the_gate_is_dropped_and_one_vouched_late_is_not_taken() -> None:
    async def go() -> None:
        vt = VirtualTime(START - 2000)
        net = LossyNetwork(vt, 7, delay_s=0.01, jitter_s=0.0, loss=0.0)
        svcs = await zone(vt, net, n=3)
        me = svcs[0].overlay.publisher_id  # type: ignore[attr-defined]
        # An order only the first coordinator receives before the gate (the
        # others get it only after): one voice, not a quorum.
        key = KEYS[12]
        early = make_order(key, "buy", ZONE, START, 300, 250, START + 900, 1, GATE - 60)
        # After the gate, a forger publishes a back-dated order and a result
        # listing it beside the whole book: one voice again.
        forger = KEYS[13]
        late = make_order(forger, "sell", ZONE, START, 5000, 1, START + 900, 1, GATE - 60)

        async def publish_near_gate() -> None:
            await vt.sleep(GATE - 1 - vt.now())
            ov = LossyOverlay(key, net)
            await ov.start()
            net.hide = lambda reader, raw: reader != me and early.encoded in raw and vt.now() < GATE + 1
            await bk.publish_order(ov, early, vt.now())
            await vt.sleep(GATE + 5 - vt.now())
            fov = LossyOverlay(forger, net)
            await fov.start()
            await bk.publish_order(fov, late, vt.now())
            book = svcs[1].rounds[START].book + [late]
            await bk.publish_result(fov, "forger", clear_interval(book, ZONE, START, 900, svcs[0].settings.rules()))
        *rounds, _ = await vt.drive(*(s.run_interval(START) for s in svcs), publish_near_gate())
        assert rounds[0].repair is not None and early.hash[:8] in rounds[0].repair.held
        assert rounds[0].repair.dropped == 1 and rounds[0].repair.peers == 4
        for r in rounds:
            assert {early.hash, late.hash}.isdisjoint(o.hash for o in r.book)
            assert r.agreed and r.repair is not None and r.repair.agreeing == 3  # 3 of 4: the forger disagrees
        assert len({r.cleared.hash for r in rounds if r.cleared}) == 1
    asyncio.run(go())


def test_a_peer_publishing_no_order_list_neither_votes_nor_stops_the_repair() -> None:
    async def go() -> None:
        vt = VirtualTime(START - 2000)
        net = LossyNetwork(vt, 9, delay_s=0.01, jitter_s=0.0, loss=0.0)
        svcs = await zone(vt, net, n=3)
        last = svcs[2].overlay.publisher_id  # type: ignore[attr-defined]
        so = make_order(KEYS[12], "buy", ZONE, START, 300, 250, START + 900, 1, GATE - 60)

        async def publish() -> None:
            await vt.sleep(GATE - 1 - vt.now())
            ov = LossyOverlay(KEYS[12], net)
            await ov.start()
            net.hide = lambda reader, raw: reader == last and so.encoded in raw and vt.now() < GATE + 1
            await bk.publish_order(ov, so, vt.now())
            await vt.sleep(GATE + 2 - vt.now())
            silent = LossyOverlay(KEYS[13], net)
            await silent.start()
            c = clear_interval([], ZONE, START, 900)
            await bk.publish_result(silent, "silent", c, [bytes([k % 256]) * 8 for k in range(bk.MAX_LISTED_ORDERS + 1)])
        *rounds, _ = await vt.drive(*(s.run_interval(START) for s in svcs), publish())
        assert rounds[2].repair is not None and rounds[2].repair.fetched == 1 and not rounds[2].repair.listed
        assert all(so.hash in {o.hash for o in r.book} for r in rounds)
        assert len({r.cleared.hash for r in rounds if r.cleared}) == 1
        assert all(r.agreed for r in rounds)  # 3 of 4 hold the book
    asyncio.run(go())


def test_an_interval_no_quorum_agrees_on_is_not_settled_and_says_why() -> None:
    async def go() -> None:
        vt = VirtualTime(START - 2000)
        net = LossyNetwork(vt, 11, delay_s=0.01, jitter_s=0.0, loss=0.0)
        svcs = await zone(vt, net, n=3)
        ids = [s.overlay.publisher_id for s in svcs]  # type: ignore[attr-defined]
        # Three orders, each reaching two of the three coordinators by the
        # gate, and never the third (a partition): every order has a quorum,
        # nobody can fetch the one it lacks, so no two books agree.
        extra = [make_order(KEYS[12 + j], "buy", ZONE, START, 300 + j, 240, START + 900, 1, GATE - 60)
                 for j in range(3)]
        net.hide = lambda reader, raw: any(o.encoded in raw and reader == ids[j] for j, o in enumerate(extra))

        async def publish() -> None:
            await vt.sleep(GATE - 100 - vt.now())
            for j, o in enumerate(extra):
                ov = LossyOverlay(KEYS[12 + j], net)
                await ov.start()
                await bk.publish_order(ov, o, vt.now())
        *rounds, _ = await vt.drive(*(s.run_interval(START) for s in svcs), publish())
        assert len({r.cleared.hash for r in rounds if r.cleared}) == 3
        for s, r in zip(svcs, rounds):
            assert not r.agreed and r.repair is not None and len(r.repair.missing) == 1
            assert "no quorum holds our book: 1 of 3" in r.unsettled_reason
            assert "could not be fetched" in r.unsettled_reason
            with pytest.raises(SettlementError, match="not settled"):
                s.settle(START, [])
    asyncio.run(go())


def test_a_unanimous_book_is_not_repaired() -> None:
    async def go() -> None:
        vt = VirtualTime(START - 2000)
        net = LossyNetwork(vt, 5, delay_s=0.01, jitter_s=0.0, loss=0.0)
        svcs = await zone(vt, net, n=3)
        rounds = await vt.drive(*(s.run_interval(START) for s in svcs))
        assert all(r.repair is None and r.agreed and r.comparison and r.comparison.unanimous for r in rounds)
        assert vt.now() < GATE + 60  # nothing waited for a grace period
    asyncio.run(go())


def test_one_key_is_one_voice_in_the_quorum() -> None:
    async def go() -> None:
        vt = VirtualTime(START)
        net = LossyNetwork(vt, 3, delay_s=0.0, jitter_s=0.0, loss=0.0)
        ov = LossyOverlay(KEYS[0], net)
        await ov.start()
        c = clear_interval([], ZONE, START, 900)
        # One signer publishing results in many slots, each claiming a
        # different peer name, is one peer: the signer.
        for k in range(5):
            await ov.put(bk.result_key(ZONE, START), bk.encode_result(f"fake-{k}", c), 60, slot=f"result:{900 + k}")
        await bk.publish_result(ov, "fake", c)
        results = await vt.drive(bk.read_results(ov, ZONE, START, 900))
        assert list(results[0]) == [ov.publisher_id]
    asyncio.run(go())


def test_quorum_rules() -> None:
    assert [quorum(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    a, b, c = b"a" * 8, b"b" * 8, b"c" * 8
    assert agreed_prefixes({"x": [a, b], "y": [a], "z": [a, b, c]}) == {a, b}
    assert agreed_prefixes({"x": [a], "y": [b]}) == frozenset()
    assert quorum_hash([a, a, b]) == a and quorum_hash([a, b]) is None and quorum_hash([]) is None


def test_a_round_nobody_disagreed_on_is_agreed() -> None:
    rnd = MarketRound(START)
    assert rnd.agreed and rnd.unsettled_reason == ""
