"""Channels that end by themselves (channels/lifecycle.py): the seller
closes before the lock time, the buyer refunds an abandoned channel, a
close is believed only from the chain, retried steps finish. Time is a
clock moved by hand, many hours in a few ticks; the transport is the
nodes' own handlers called in process (tests/channels/test_transport.py
covers CoAP)."""

from __future__ import annotations

import asyncio

import pytest

from microgrid.coordinator.channels.chain import ChainError, LocalLedger
from microgrid.coordinator.channels.channel import State
from microgrid.coordinator.channels.lifecycle import ChannelLifecycle, LifecycleSettings
from microgrid.coordinator.channels.messages import Message, decode, encode
from microgrid.coordinator.channels.protocol import ChannelNode, signed_amount, txid_hex_of

from .conftest import FixedClock, make_node

LOCK_S = 7_200
STEP_S = 300


class Net:
    """Coordinators by URI; one taken offline answers nothing."""

    def __init__(self) -> None:
        self.nodes: dict[str, ChannelNode] = {}
        self.offline: set[str] = set()

    def exchange_for(self, me: ChannelNode):
        async def exchange(uri: str, msg: Message | None) -> None:
            while msg is not None:
                if uri in self.offline or uri not in self.nodes:
                    raise ConnectionError(f"{uri} does not answer")
                msg = me.on_reply(msg, self.nodes[uri].handle(msg.wire))
        return exchange


@pytest.fixture
def world(tmp_path, ledger: LocalLedger):
    clock = FixedClock()
    ledger.clock = clock
    net = Net()
    a = make_node(tmp_path, "a", ledger, clock, funds=500_000, uri="coap://a")
    b = make_node(tmp_path, "b", ledger, clock, uri="coap://b")
    net.nodes.update({"coap://a": a, "coap://b": b})
    settings = LifecycleSettings(every_s=STEP_S, full_below_sat=1_000)
    return a, b, clock, net, settings


def open_and_pay(a: ChannelNode, b: ChannelNode, net: Net, amounts: list[int], capacity: int = 100_000) -> bytes:
    async def go() -> bytes:
        ex = net.exchange_for(a)
        msg = a.open_request("coap://b", capacity, LOCK_S, b.public_key)
        await ex("coap://b", msg)
        for amount in amounts:
            await ex("coap://b", a.pay_request(msg.channel_id, amount))
        return msg.channel_id
    return asyncio.run(go())


def tick(*lifecycles: ChannelLifecycle) -> list:
    return [asyncio.run(lc.tick()) for lc in lifecycles]


def test_seller_closes_before_the_lock_time_and_keeps_its_earnings(world, ledger: LocalLedger) -> None:
    a, b, clock, net, settings = world
    cid = open_and_pay(a, b, net, [250] * 20)
    buyer, seller = ChannelLifecycle(a, net.exchange_for(a), settings), ChannelLifecycle(b, net.exchange_for(b), settings)
    locktime = a.payer(cid).terms.refund_locktime
    closed_at = None
    while clock.t < locktime + 3 * STEP_S:  # on past the lock time: nothing may undo the close
        r_buyer, r_seller = tick(buyer, seller)
        if cid in r_seller.closed:
            closed_at = clock.t
        assert not r_buyer.refunded and not r_buyer.failed and not r_seller.failed
        clock.t += STEP_S
    assert closed_at is not None and locktime - 600 <= closed_at < locktime
    closing = b.payee(cid).closing_tx
    assert ledger.spent_by(a.payer(cid).funding) == closing.hex_hash()
    assert b.wallet.balance() == 5_000  # the seller's earnings are its own, on the ledger
    assert b.payee(cid).payer_notified
    assert a.payer(cid).state == State.CLOSED and a.payer(cid).closed_amount == 5_000
    # After the lock time the buyer's refund finds the funding spent.
    with pytest.raises(Exception):
        a.refund(cid)
    assert ledger.spent_by(a.payer(cid).funding) == closing.hex_hash()


def test_seller_closes_a_full_channel_at_once(world, ledger: LocalLedger) -> None:
    a, b, clock, net, settings = world
    cid = open_and_pay(a, b, net, [10_000])
    seller = ChannelLifecycle(b, net.exchange_for(b), settings)
    assert tick(seller)[0].closed == []
    max_payment = a.payer(cid).terms.max_payment
    asyncio.run(net.exchange_for(a)("coap://b", a.pay_request(cid, max_payment - 10_000 - 999)))
    r = tick(seller)[0]
    assert r.closed == [cid] and r.notified == [cid]
    assert a.payer(cid).state == State.CLOSED and a.payer(cid).closed_amount == max_payment - 999


def test_buyer_refunds_a_channel_its_seller_abandoned(world, ledger: LocalLedger) -> None:
    a, b, clock, net, settings = world
    cid = open_and_pay(a, b, net, [3_000])
    net.offline.add("coap://b")  # the seller is gone for good, never closes
    buyer = ChannelLifecycle(a, net.exchange_for(a), settings)
    before = a.wallet.balance()
    locktime = a.payer(cid).terms.refund_locktime
    while clock.t <= locktime:
        assert tick(buyer)[0].refunded == []
        clock.t += STEP_S
    r = tick(buyer)[0]
    assert r.refunded == [cid] and a.payer(cid).state == State.REFUNDED
    refund = a.payer(cid).refund
    assert ledger.confirmations(refund.hex_hash()) == 0 and ledger.spent_by(a.payer(cid).funding) == refund.hex_hash()
    assert a.wallet.balance() == before + refund.outputs[0].value
    # The books show what the chain shows: nothing reached the seller.
    assert a.signed_by_peer("payer") == {b.public_key.hex(): 0}
    # Later ticks leave it alone; mined, it is not looked at again.
    ledger.mine()
    assert tick(buyer)[0].refunded == []


def test_an_unbroadcast_close_is_not_believed(world, ledger: LocalLedger) -> None:
    a, b, clock, net, settings = world
    cid = open_and_pay(a, b, net, [1_000])
    payee = b.payee(cid)
    old_close = payee.complete_update(payee.latest)  # signed, never broadcast
    asyncio.run(net.exchange_for(a)("coap://b", a.pay_request(cid, 2_000)))
    notice = encode(b.identity, "closed", cid, {"closing_tx": old_close.to_bytes()})
    reply = decode(a.handle(notice.wire))
    assert reply.type == "error" and reply.body["code"] == "not-on-chain"
    assert a.payer(cid).state == State.OPEN and signed_amount(a.payer(cid)) == 3_000
    # The funding output is unspent: after the lock time the refund works.
    clock.t = a.payer(cid).terms.refund_locktime + 1
    a.refund(cid)
    assert a.payer(cid).state == State.REFUNDED


def test_a_close_broadcast_before_a_crash_is_finished_after_it(world, tmp_path, ledger: LocalLedger) -> None:
    a, b, clock, net, settings = world
    cid = open_and_pay(a, b, net, [4_000])
    clock.t = a.payer(cid).terms.refund_locktime - 500
    # The seller built, stored and broadcast its close, then died before
    # recording it closed or telling the buyer.
    e = b.channels[cid]
    tx = e.channel.close(b.now())
    b._save(e)
    ledger.broadcast(tx)
    b.store.close()
    b2 = make_node(tmp_path, "b", ledger, clock, uri="coap://b")
    net.nodes["coap://b"] = b2
    assert b2.payee(cid).state == State.CLOSING
    clock.t += 400  # past the margin, nearer the lock time: the stored tx is broadcast again, not rebuilt
    r = tick(ChannelLifecycle(b2, net.exchange_for(b2), settings))[0]
    assert r.closed == [cid] and r.notified == [cid] and not r.failed
    assert b2.payee(cid).state == State.CLOSED and ledger.mempool().count(tx.hex_hash()) == 1
    assert a.payer(cid).state == State.CLOSED and a.payer(cid).closed_amount == 4_000


def test_a_lost_close_notice_is_sent_again_or_fetched_by_the_buyer(world, ledger: LocalLedger) -> None:
    a, b, clock, net, settings = world
    cid = open_and_pay(a, b, net, [1_500])
    seller = ChannelLifecycle(b, net.exchange_for(b), settings)
    buyer = ChannelLifecycle(a, net.exchange_for(a), settings)
    clock.t = a.payer(cid).terms.refund_locktime - 600
    net.offline.add("coap://a")
    r = tick(seller)[0]
    assert r.closed == [cid] and r.failed == [cid] and not b.payee(cid).payer_notified
    assert a.payer(cid).state == State.OPEN
    net.offline.discard("coap://a")
    r = tick(seller)[0]
    assert r.notified == [cid] and a.payer(cid).state == State.CLOSED

    # The other way round: the seller closed (no notice got through), the
    # buyer sees its funding spent and asks for the closing tx.
    cid2 = open_and_pay(a, b, net, [2_500])
    b.close(cid2)  # broadcast; the notice is never sent
    assert a.payer(cid2).state == State.OPEN
    r = tick(buyer)[0]
    assert r.close_seen == [cid2] and a.payer(cid2).closed_amount == 2_500
    assert ledger.spent_by(a.payer(cid2).funding) == a.payer(cid2).closing_txid


def test_run_ticks_until_stopped(world) -> None:
    a, b, clock, net, settings = world
    lc = ChannelLifecycle(a, net.exchange_for(a), LifecycleSettings(every_s=0.01))

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(lc.run(stop))
        for _ in range(500):
            if lc.ticks >= 3:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(go())
    assert lc.ticks >= 3


def test_funding_is_watched_and_a_vanished_funding_stops_updates_until_it_is_back(world, ledger: LocalLedger) -> None:
    a, b, clock, net, settings = world
    cid = open_and_pay(a, b, net, [500])
    seller = ChannelLifecycle(b, net.exchange_for(b), settings)
    buyer = ChannelLifecycle(a, net.exchange_for(a), settings)
    funding_txid = txid_hex_of(b.payee(cid).funding)
    assert ledger.confirmations(funding_txid) == 0
    r = tick(seller)[0]
    assert not r.funding_lost and not b.payee(cid).funding_confirmed  # 0 of 1 confirmation: still watched
    ledger.evict(funding_txid)  # the mempool lost it
    assert tick(seller)[0].funding_lost == [cid] and b.payee(cid).funding_lost
    ex = net.exchange_for(a)
    with pytest.raises(Exception, match="funding"):
        asyncio.run(ex("coap://b", a.pay_request(cid, 500)))
    assert b.payee(cid).received == 500
    # The buyer puts its funding back; the seller takes updates again.
    assert tick(buyer)[0].funded == [cid] and ledger.confirmations(funding_txid) == 0
    assert tick(seller)[0].funding_lost == [] and not b.payee(cid).funding_lost
    asyncio.run(ex("coap://b", a.pending_request(cid)))
    assert b.payee(cid).received == 1_000
    ledger.mine()
    tick(seller)
    assert b.payee(cid).funding_confirmed  # watched no more
    ledger_calls = []
    b.chain = type("Counting", (), {"__getattr__": lambda self, n: (ledger_calls.append(n), getattr(ledger, n))[1]})()
    tick(seller)
    assert "confirmations" not in ledger_calls


class FlakyBroadcast(LocalLedger):
    """Refuses the next `fail` broadcasts, as an unreachable node would."""

    fail = 0

    def broadcast(self, tx):  # type: ignore[no-untyped-def]
        if self.fail:
            self.fail -= 1
            raise ChainError("the node is unreachable")
        return super().broadcast(tx)


def test_an_open_whose_funding_broadcast_failed_is_finished_by_the_lifecycle(tmp_path) -> None:
    clock = FixedClock()
    ledger = FlakyBroadcast(clock=clock)
    net = Net()
    a = make_node(tmp_path, "a", ledger, clock, funds=500_000, uri="coap://a")
    b = make_node(tmp_path, "b", ledger, clock, uri="coap://b")
    net.nodes.update({"coap://a": a, "coap://b": b})
    msg = a.open_request("coap://b", 100_000, LOCK_S, b.public_key)
    ledger.fail = 1
    with pytest.raises(ChainError):
        asyncio.run(net.exchange_for(a)("coap://b", msg))
    cid = msg.channel_id
    assert a.payer(cid).state == State.REFUND_SIGNED and b.payee(cid).state == State.REFUND_SIGNED
    r = tick(ChannelLifecycle(a, net.exchange_for(a), LifecycleSettings()))[0]
    assert r.funded == [cid] and not r.failed
    assert a.payer(cid).state == b.payee(cid).state == State.OPEN
    asyncio.run(net.exchange_for(a)("coap://b", a.pay_request(cid, 700)))
    assert b.payee(cid).received == 700


@pytest.mark.parametrize("answered", [0, 1])
def test_an_open_that_stops_before_funding_leaves_nothing_behind(world, answered: int) -> None:
    """A seller that does not answer (or stops answering after accepting)
    leaves no proposal row and no reserved coins on the buyer."""
    from microgrid.coordinator.channels.transport import ChannelClient

    a, b, clock, net, settings = world
    before = a.wallet.balance()

    class Cut(ChannelClient):
        calls = 0

        async def send(self, uri: str, msg: Message) -> bytes:
            Cut.calls += 1
            if Cut.calls > answered:
                raise ConnectionError("no answer")
            return b.handle(msg.wire)

    with pytest.raises(ConnectionError):
        asyncio.run(Cut(a, None).open_channel("coap://b", 100_000, LOCK_S, b.public_key))  # type: ignore[arg-type]
    assert a.channels == {} and list(a.store.rows()) == []
    assert a.wallet.balance() == before and not a.wallet.reserved


def test_a_close_the_chain_lost_is_broadcast_again_until_mined(world, ledger: LocalLedger) -> None:
    a, b, clock, net, settings = world
    cid = open_and_pay(a, b, net, [1_200])
    seller = ChannelLifecycle(b, net.exchange_for(b), settings)
    clock.t = a.payer(cid).terms.refund_locktime - 600
    assert tick(seller)[0].closed == [cid]
    closing = b.payee(cid).closing_tx.hex_hash()
    ledger.evict(closing)  # dropped from the mempool
    assert tick(seller)[0].closed == [cid] and ledger.confirmations(closing) == 0
    ledger.mine()
    assert tick(seller)[0].closed == [] and cid in seller._confirmed
    assert ledger.confirmations(closing) == 1 and b.wallet.balance() == 1_200
