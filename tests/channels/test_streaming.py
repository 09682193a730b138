"""Pay-as-delivered energy: relay control, journal and replay, and the
end-to-end stream of 1,000 updates over CoAP."""

from __future__ import annotations

import asyncio

import aiocoap
import pytest

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.channel import State
from microgrid.coordinator.channels.store import ChannelStore
from microgrid.coordinator.channels.streaming import (
    EnergyBuyer,
    EnergySeller,
    StreamError,
    StreamTerms,
    replay,
)
from microgrid.coordinator.channels.transport import ChannelClient, channel_uri, serve

from ..conftest import free_udp_port
from .conftest import FixedClock, make_node


class RecordingRelay:
    """Stands in for the GPIO export relay: remembers every command."""

    def __init__(self) -> None:
        self.state = "connected"
        self.calls: list[str] = []

    def connect(self) -> None:
        self.state = "connected"
        self.calls.append("connect")

    def disconnect(self) -> None:
        self.state = "disconnected"
        self.calls.append("disconnect")


CID = bytes(16)


def test_relay_opens_when_buyer_exceeds_credit_and_closes_when_paid(tmp_path) -> None:
    store = ChannelStore(tmp_path / "s.db")
    terms = StreamTerms(price_per_increment=30, increment_wh=10, credit_sat=60)
    relay = RecordingRelay()
    s = EnergySeller(CID, terms, relay, store)
    s.on_reading(1_000.0, 0)
    assert s.on_reading(1_010.0, 1) == 1
    assert s.on_reading(1_025.0, 2) == 1      # 25 Wh: 2 increments, owed 60 = credit
    assert relay.calls == []
    s.on_reading(1_030.0, 3)                  # 3 increments, owed 90 > 60
    assert relay.calls == ["disconnect"] and relay.state == "disconnected"
    s.on_payment(60, 1, 4)                    # owed 30: within credit but not paid up
    assert relay.calls == ["disconnect"]
    s.on_payment(30, 2, 5)                    # paid up
    assert relay.calls == ["disconnect", "connect"]
    kinds = [e["kind"] for e in store.events(CID)]
    assert kinds.count("increment") == 3 and kinds.count("payment") == 2
    assert "relay-off" in kinds and "relay-on" in kinds
    r = replay(terms, store.events(CID))
    assert r.consistent and r.increments == 3 and r.due == r.paid == 90


def test_replay_detects_a_tampered_journal(tmp_path) -> None:
    store = ChannelStore(tmp_path / "s.db")
    terms = StreamTerms(price_per_increment=10, credit_sat=0)
    s = EnergySeller(CID, terms, RecordingRelay(), store)
    s.on_reading(0.0, 0)
    s.on_reading(10.0, 1)  # owed 10 > 0: off
    events = store.events(CID)
    assert replay(terms, events).consistent
    forged = [e for e in events if e["kind"] != "reading" or e["wh"] != 10.0]
    assert not replay(terms, forged).consistent


def test_meter_going_backwards_and_bad_terms_are_refused() -> None:
    s = EnergySeller(CID, StreamTerms(price_per_increment=1), RecordingRelay())
    s.on_reading(50.0, 0)
    with pytest.raises(StreamError, match="backwards"):
        s.on_reading(40.0, 1)
    with pytest.raises(StreamError):
        StreamTerms(price_per_increment=0)
    with pytest.raises(StreamError):
        StreamTerms(price_per_increment=1, credit_sat=5, resume_below_sat=6)
    assert StreamTerms.from_price_per_kwh(3_000).price_per_increment == 30


def test_buyer_pays_per_increment() -> None:
    b = EnergyBuyer(CID, StreamTerms(price_per_increment=7))
    assert b.on_reading(100.0, 0) == 0
    assert b.on_reading(109.9, 1) == 0
    assert b.on_reading(130.0, 2) == 21
    b.on_paid(21, 1, 2)
    assert b.on_reading(131.0, 3) == 0


def test_thousand_updates_tied_to_metered_delivery_over_coap(tmp_path, ledger: LocalLedger) -> None:
    """The issue's bar: open, 1,000 updates each for a metered increment,
    a stall that opens the relay and a payment that closes it, close, and
    the ledger accepts the closing transaction."""
    clock = FixedClock()
    ledger.clock = clock
    pa, pb = free_udp_port(), free_udp_port()
    buyer_node = make_node(tmp_path, "buyer", ledger, clock, funds=1_000_000, uri=channel_uri("127.0.0.1", pa),
                           full_check=True)
    seller_node = make_node(tmp_path, "seller", ledger, clock, uri=channel_uri("127.0.0.1", pb))
    terms = StreamTerms(price_per_increment=50, increment_wh=10, credit_sat=100)
    relay = RecordingRelay()

    async def go() -> None:
        sa = await serve(buyer_node, "127.0.0.1", pa)
        sb = await serve(seller_node, "127.0.0.1", pb)
        client = ChannelClient(buyer_node, await aiocoap.Context.create_client_context())
        seller_client = ChannelClient(seller_node, await aiocoap.Context.create_client_context())
        try:
            cid = await client.open_channel(seller_node.uri, 200_000, 7_200, seller_node.public_key)
            seller = EnergySeller(cid, terms, relay, seller_node.store)
            seller_node.payment_listeners.append(lambda c, d, u: seller.on_payment(d, u.seq, clock.now()))
            buyer = EnergyBuyer(cid, terms, buyer_node.store)
            wh = 5_000.0
            seller.on_reading(wh, clock.now())
            buyer.on_reading(wh, clock.now())
            stalled_at = 400
            owed_during_stall = 0
            for step in range(1, 1_004):  # 3 stalled steps: 1,000 updates
                clock.t += 3
                wh += 10.0  # one increment delivered, as both meters read it
                seller.on_reading(wh, clock.now())
                amount = buyer.on_reading(wh, clock.now())
                if stalled_at <= step < stalled_at + 3:
                    owed_during_stall += amount
                    continue  # the buyer falls behind
                assert amount > 0
                await client.pay(cid, amount)
                buyer.on_paid(amount, buyer_node.payer(cid).acked_seq, clock.now())
            assert relay.calls == ["disconnect", "connect"]
            assert seller.owed == 0 and seller.increments == 1_003
            assert seller_node.payee(cid).received == 50_150
            assert seller_node.payee(cid).seq == 1_000  # the catch-up update pays 4 increments
            await seller_client.close_as_payee(cid)
            assert buyer_node.payer(cid).state == State.CLOSED
            closing = ledger.transaction(buyer_node.payer(cid).closing_txid)
            assert closing.outputs[0].value == 50_150
            r = replay(terms, seller_node.store.events(cid))
            assert r.consistent and r.paid == r.due == 50_150
        finally:
            for ctx in (client.context, seller_client.context, sa, sb):
                await ctx.shutdown()

    asyncio.run(go())
