"""The channel protocol between two nodes, message by message (no sockets)."""

from __future__ import annotations

import os

import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.channel import State
from microgrid.coordinator.channels.messages import MessageError, decode, encode
from microgrid.coordinator.channels.protocol import ChannelNode, ProtocolError

from .conftest import FixedClock, make_node


def run(payer: ChannelNode, payee: ChannelNode, msg) -> None:
    while msg is not None:
        msg = payer.on_reply(msg, payee.handle(msg.wire))


def error_of(wire: bytes) -> tuple[str, str]:
    m = decode(wire)
    assert m.type == "error", m
    return m.body["code"], m.body["detail"]


@pytest.fixture
def nodes(tmp_path, ledger: LocalLedger):
    clock = FixedClock()
    ledger.clock = clock
    a = make_node(tmp_path, "a", ledger, clock, funds=500_000)
    b = make_node(tmp_path, "b", ledger, clock)
    return a, b, clock


def open_channel(a: ChannelNode, b: ChannelNode, capacity: int = 100_000) -> bytes:
    msg = a.open_request("coap://b", capacity, 7_200, b.public_key)
    run(a, b, msg)
    return msg.channel_id


def test_open_pay_close_between_nodes(nodes, ledger: LocalLedger) -> None:
    a, b, clock = nodes
    cid = open_channel(a, b)
    assert a.payer(cid).state == State.OPEN and b.payee(cid).state == State.OPEN
    got = []
    b.payment_listeners.append(lambda c, delta, u: got.append(delta))
    for _ in range(20):
        run(a, b, a.pay_request(cid, 250))
    assert a.payer(cid).acked_amount == b.payee(cid).received == 5_000
    assert got == [250] * 20
    run(a, b, a.close_request(cid))
    assert a.payer(cid).state == b.payee(cid).state == State.CLOSED
    closing = ledger.transaction(a.payer(cid).closing_txid)
    assert closing.outputs[0].value == 5_000
    # Both wallets see their outputs.
    assert b.wallet.balance() == 5_000
    assert len(b.store.updates(cid)) == 20


def test_messages_from_another_key_are_refused_and_change_nothing(nodes) -> None:
    a, b, clock = nodes
    cid = open_channel(a, b)
    run(a, b, a.pay_request(cid, 100))
    intruder = PrivateKey.from_random()
    u = a.payer(cid)
    forged = encode(intruder, "pay", cid, {"seq": 2, "amount": 10_000, "sig": b"\x30" * 70})
    assert error_of(b.handle(forged.wire))[0] == "forbidden"
    assert b.payee(cid).received == 100


def test_tampered_message_fails_authentication(nodes) -> None:
    a, b, clock = nodes
    cid = open_channel(a, b)
    msg = a.pay_request(cid, 100)
    wire = bytearray(msg.wire)
    wire[-5] ^= 1  # inside the signature
    assert error_of(b.handle(bytes(wire)))[0] in ("auth", "malformed")
    with pytest.raises(MessageError):
        decode(bytes(wire))
    assert b.payee(cid).received == 0


def test_replayed_and_out_of_order_messages_answer_errors(nodes) -> None:
    a, b, clock = nodes
    open_msg = a.open_request("coap://b", 100_000, 7_200, b.public_key)
    accept = b.handle(open_msg.wire)
    assert error_of(b.handle(open_msg.wire))[0] == "duplicate"  # replayed open
    refund_req = a.on_reply(open_msg, accept)
    # funded before the refund is signed: out of order
    early = encode(a.identity, "funded", open_msg.channel_id, {"funding_tx": a.payer(open_msg.channel_id).funding_tx.to_bytes()})
    assert error_of(b.handle(early.wire))[0] == "state"
    sig = b.handle(refund_req.wire)
    assert error_of(b.handle(refund_req.wire))[0] == "state"  # replayed refund request
    funded = a.on_reply(refund_req, sig)
    run(a, b, funded)
    cid = open_msg.channel_id
    p1 = a.pay_request(cid, 100)
    run(a, b, p1)
    # a replay of an acknowledged update is a duplicate; state unchanged
    assert error_of(b.handle(p1.wire))[0] == "duplicate"
    p2 = a.pay_request(cid, 100)
    p3wire = None
    run(a, b, p2)
    assert error_of(b.handle(p1.wire))[0] == "stale"
    assert b.payee(cid).seq == 2 and b.payee(cid).received == 200


def test_reply_to_another_request_is_refused(nodes) -> None:
    a, b, clock = nodes
    cid = open_channel(a, b)
    p1 = a.pay_request(cid, 100)
    ack1 = b.handle(p1.wire)
    a.on_reply(p1, ack1)
    p2 = a.pay_request(cid, 100)
    with pytest.raises(ProtocolError, match="another request"):
        a.on_reply(p2, ack1)
    assert a.payer(cid).acked_seq == 1


def test_lost_ack_is_recovered_by_resending_the_pending_update(nodes) -> None:
    a, b, clock = nodes
    cid = open_channel(a, b)
    p1 = a.pay_request(cid, 100)
    b.handle(p1.wire)  # the ack is lost
    with pytest.raises(ProtocolError, match="pending"):
        a.pay_request(cid, 100)
    again = a.pending_request(cid)
    assert again is not None
    run(a, b, again)  # the payee answers "duplicate": it holds exactly this update
    assert a.payer(cid).acked_seq == 1
    run(a, b, a.pay_request(cid, 100))
    assert b.payee(cid).received == 200


def test_funded_claim_without_broadcast_is_refused(tmp_path, ledger: LocalLedger) -> None:
    clock = FixedClock()
    a = make_node(tmp_path, "a", ledger, clock, funds=500_000)
    b = make_node(tmp_path, "b", ledger, clock)
    open_msg = a.open_request("coap://b", 100_000, 7_200, b.public_key)
    refund_req = a.on_reply(open_msg, b.handle(open_msg.wire))
    a.on_reply(refund_req, b.handle(refund_req.wire)) if False else None
    sig_wire = b.handle(refund_req.wire)
    ch = a.payer(open_msg.channel_id)
    ch.on_refund_signature(decode(sig_wire).body["sig"])
    # never broadcast
    funded = encode(a.identity, "funded", open_msg.channel_id, {"funding_tx": ch.funding_tx.to_bytes()})
    assert error_of(b.handle(funded.wire))[0] == "funding"
    assert b.payee(open_msg.channel_id).state == State.REFUND_SIGNED


def test_restart_resumes_open_channels_on_both_sides(tmp_path, ledger: LocalLedger) -> None:
    clock = FixedClock()
    ledger.clock = clock
    a = make_node(tmp_path, "a", ledger, clock, funds=500_000)
    b = make_node(tmp_path, "b", ledger, clock)
    cid = open_channel(a, b)
    for _ in range(5):
        run(a, b, a.pay_request(cid, 300))
    a.store.close()
    b.store.close()
    a2 = make_node(tmp_path, "a", ledger, clock)
    b2 = make_node(tmp_path, "b", ledger, clock)
    assert a2.payer(cid).acked_amount == 1_500 and b2.payee(cid).received == 1_500
    assert a2.payer(cid).state == State.OPEN
    run(a2, b2, a2.pay_request(cid, 300))
    run(a2, b2, a2.close_request(cid))
    assert ledger.transaction(a2.payer(cid).closing_txid).outputs[0].value == 1_800


def test_refund_through_the_node_after_lock_time(nodes, ledger: LocalLedger) -> None:
    a, b, clock = nodes
    cid = open_channel(a, b)
    with pytest.raises(Exception, match="lock time"):
        a.refund(cid)
    clock.t = a.payer(cid).terms.refund_locktime
    with pytest.raises(Exception, match="lock time"):
        a.refund(cid)
    clock.t += 1
    a.refund(cid)
    assert a.payer(cid).state == State.REFUNDED
    # the payee can no longer close
    assert error_of(b.handle(a.close_request(cid).wire))[0] in ("locktime", "amount")


def test_payee_closes_when_margin_reached(nodes, ledger: LocalLedger) -> None:
    a, b, clock = nodes
    cid = open_channel(a, b)
    run(a, b, a.pay_request(cid, 1_000))
    assert b.channels_to_close() == []
    clock.t = b.payee(cid).terms.refund_locktime - 600
    assert b.channels_to_close() == [cid]
    notice = b.close(cid)
    run(b, a, notice)
    assert a.payer(cid).state == State.CLOSED and a.payer(cid).closed_amount == 1_000


def test_malformed_requests_answer_errors(nodes) -> None:
    a, b, clock = nodes
    assert error_of(b.handle(b"\xff\x00garbage"))[0] == "malformed"
    bad = encode(a.identity, "pay", os.urandom(16), {"seq": 1, "amount": 1, "sig": b"x"})
    assert error_of(b.handle(bad.wire))[0] == "unknown-channel"
    with pytest.raises(MessageError):
        encode(a.identity, "pay", os.urandom(16), {"seq": "1", "amount": 1, "sig": b"x"})


def test_garbage_signature_in_update_is_refused(nodes) -> None:
    a, b, clock = nodes
    cid = open_channel(a, b)
    for sig in (b"", b"\x30\x02\x01", b"\x00" * 72, bytes(range(72)) + b"\x41"):
        bad = encode(a.identity, "pay", cid, {"seq": 1, "amount": 100, "sig": sig})
        assert error_of(b.handle(bad.wire))[0] == "signature"
    assert b.payee(cid).latest is None


def test_storage_failure_is_not_acknowledged(nodes) -> None:
    a, b, clock = nodes
    cid = open_channel(a, b)
    msg = a.pay_request(cid, 100)
    b.store.conn.close()  # the disk is gone
    assert error_of(b.handle(msg.wire))[0] == "internal"
    assert b.payee(cid).latest is None
