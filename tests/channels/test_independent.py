"""Every kind of transaction the channels write (wallet payment, funding,
each commitment, close, refund) is valid in a second BSV implementation
(bsv-sdk), and that check can fail."""

from __future__ import annotations

import pytest

pytest.importorskip("bsv", reason="bsv-sdk (the independent implementation) is not installed; pip install -e '.[dev]'")

from bitcoinx import PrivateKey, Script, TxOutput  # noqa: E402

from microgrid.coordinator.channels.channel import State  # noqa: E402

from .conftest import FixedClock, make_node  # noqa: E402
from .independent import CheckedLedger, IndependentCheckFailed, check_with_bsv_sdk  # noqa: E402


def test_every_channel_transaction_is_valid_in_bsv_sdk(tmp_path) -> None:
    clock = FixedClock()
    ledger = CheckedLedger(clock=clock)
    a = make_node(tmp_path, "a", ledger, clock, funds=300_000)
    b = make_node(tmp_path, "b", ledger, clock)
    from microgrid.coordinator.channels.wallet import Utxo
    index, script = a.wallet.receive_script()
    a.wallet.add_utxo(Utxo(ledger.faucet(script, 40_000), 40_000, index))  # two coins: a 2-input funding

    def run(msg):  # type: ignore[no-untyped-def]
        while msg is not None:
            msg = a.on_reply(msg, b.handle(msg.wire))

    closed = a.open_request("coap://b", 320_000, 7_200, b.public_key)
    run(closed)
    refunded = a.open_request("coap://b", 10_000, 7_200, b.public_key)
    run(refunded)
    cid = closed.channel_id
    payee = b.payee(cid)
    prev = [TxOutput(payee.terms.capacity, payee.terms.funding_script)]
    for amount in (546, 1_000, 5_000, 300_000, a.payer(cid).remaining):  # up to a change below dust
        run(a.pay_request(cid, amount - a.payer(cid).paid if amount > a.payer(cid).paid else 1))
        check_with_bsv_sdk(payee.complete_update(payee.latest), prev)  # every commitment the payee holds
    run(a.close_request(cid))
    clock.t = a.payer(refunded.channel_id).terms.refund_locktime + 1
    a.refund(refunded.channel_id)
    assert a.payer(cid).state == State.CLOSED and a.payer(refunded.channel_id).state == State.REFUNDED
    # A wallet payment out.
    ledger.broadcast(b.wallet.build_payment([TxOutput(10_000, PrivateKey.from_random().public_key.P2PKH_script())]))
    # Fundings (one spending two coins), the close, the refund, the payment.
    assert ledger.checked == 5


def test_the_independent_check_can_fail(tmp_path) -> None:
    clock = FixedClock()
    ledger = CheckedLedger(clock=clock)
    a = make_node(tmp_path, "a", ledger, clock, funds=100_000)
    b = make_node(tmp_path, "b", ledger, clock)
    opened = a.open_request("coap://b", 50_000, 7_200, b.public_key)
    msg = opened
    while msg is not None:
        msg = a.on_reply(msg, b.handle(msg.wire))
    payee = b.payee(opened.channel_id)
    msg2 = a.pay_request(opened.channel_id, 2_000)
    b.handle(msg2.wire)
    good = payee.complete_update(payee.latest)
    prev = [TxOutput(payee.terms.capacity, payee.terms.funding_script)]
    check_with_bsv_sdk(good, prev)
    # More for the payee than the payer signed: the signature no longer covers it.
    bad = good.__class__.from_bytes(good.to_bytes())
    bad.outputs[0].value += 1
    with pytest.raises(IndependentCheckFailed):
        check_with_bsv_sdk(bad, prev)
    # The right signatures against another amount in the funding output (the FORKID sighash commits to it).
    with pytest.raises(IndependentCheckFailed):
        check_with_bsv_sdk(good, [TxOutput(prev[0].value + 1, prev[0].script_pubkey)])
    # Signatures in the wrong order for the 2-of-2 CHECKMULTISIG.
    sigs = [item for item in good.inputs[0].script_sig.ops()][1:]
    swapped = good.__class__.from_bytes(good.to_bytes())
    swapped.inputs[0].script_sig = Script() << 0 << sigs[1] << sigs[0]
    with pytest.raises(IndependentCheckFailed):
        check_with_bsv_sdk(swapped, prev)
