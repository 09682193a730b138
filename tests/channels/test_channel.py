"""The payer and payee state machines against the local ledger."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.channels.chain import ChainError, LocalLedger
from microgrid.coordinator.channels.channel import (
    AmountError,
    ChannelPolicy,
    DuplicateUpdate,
    DustError,
    FeeError,
    LockTimeError,
    PayeeChannel,
    PayerChannel,
    SequenceGap,
    SignatureError,
    StaleUpdate,
    State,
    StateError,
    TermsError,
    Update,
    update_tx,
)
from microgrid.coordinator.channels.txs import Outpoint, verify_transaction
from microgrid.coordinator.channels.wallet import Wallet

from .conftest import fund

T0 = 1_700_000_000
POLICY = ChannelPolicy(min_lock_seconds=3_600, close_margin=600)


@dataclass
class Pair:
    payer: PayerChannel
    payee: PayeeChannel
    wallet: Wallet
    ledger: LocalLedger


def open_pair(ledger: LocalLedger, capacity: int = 100_000, policy: ChannelPolicy = POLICY,
              lock: int = 7_200) -> Pair:
    wallet = Wallet.generate(fee_rate=policy.fee_rate)
    fund(wallet, ledger, capacity * 2)
    payer_key, payee_key = PrivateKey.from_random(), PrivateKey.from_random()
    _, payer_script = wallet.receive_script()
    payee_script = PrivateKey.from_random().public_key.P2PKH_script()
    payer = PayerChannel.propose(os.urandom(16), capacity, payer_key, bytes(payer_script), T0, lock, policy)
    t = payer.terms
    payee = PayeeChannel.accept(t.channel_id, t.capacity, t.fee, t.refund_locktime, t.payer_key, t.payer_script,
                                payee_key, bytes(payee_script), T0, policy)
    payer.on_accept(payee.terms.payee_key, payee.terms.payee_script)
    funding_tx = wallet.build_payment([payer.funding_output()])
    refund = payer.refund_request(funding_tx)
    sig = payee.sign_refund(payer.funding, refund)
    payer.on_refund_signature(sig)
    ledger.broadcast(funding_tx)
    wallet.scan(funding_tx)
    payee.on_funded(funding_tx)
    payer.on_funded()
    assert payer.state == payee.state == State.OPEN
    return Pair(payer, payee, wallet, ledger)


def test_stream_of_updates_closes_and_ledger_accepts_latest(ledger: LocalLedger) -> None:
    p = open_pair(ledger)
    for i in range(50):
        u = p.payer.pay(100, T0 + i)
        assert p.payee.receive(u, T0 + i, full_check=(i % 10 == 0)) == 100
        p.payer.on_ack(u.seq, u.amount)
    close = p.payee.close(T0 + 100)
    ledger.broadcast(close)
    p.payee.on_closed()
    p.payer.on_close(close)
    assert close.outputs[0].value == 5_000
    assert close.outputs[1].value == 100_000 - p.payer.terms.fee - 5_000
    assert p.payer.closed_amount == 5_000 and p.payer.state == State.CLOSED


def test_update_lowering_the_total_is_rejected_and_changes_nothing(ledger: LocalLedger) -> None:
    p = open_pair(ledger)
    p.payee.receive(p.payer.pay(1_000, T0), T0)
    t = p.payer.terms
    tx = update_tx(t, p.payer.funding, 500, POLICY.dust_limit)
    from microgrid.coordinator.channels.txs import sign_input
    sig = sign_input(tx, 0, p.payer.key, p.payee.prevout)
    with pytest.raises(AmountError, match="totals only grow"):
        p.payee.receive(Update(2, 500, sig), T0)
    assert p.payee.received == 1_000 and p.payee.seq == 1


def test_bad_signature_is_rejected(ledger: LocalLedger) -> None:
    p = open_pair(ledger)
    u = p.payer.pay(1_000, T0)
    forged = Update(u.seq, u.amount + 1, u.payer_sig)
    with pytest.raises(SignatureError):
        p.payee.receive(forged, T0)
    other = PrivateKey.from_random()
    tx = update_tx(p.payer.terms, p.payer.funding, 1_000, 1)
    from microgrid.coordinator.channels.txs import sign_input
    with pytest.raises(SignatureError):
        p.payee.receive(Update(1, 1_000, sign_input(tx, 0, other, p.payee.prevout)), T0)
    assert p.payee.latest is None


def test_replayed_and_out_of_order_updates_are_rejected(ledger: LocalLedger) -> None:
    p = open_pair(ledger)
    u1 = p.payer.pay(100, T0)
    u2 = p.payer.pay(100, T0)
    u3 = p.payer.pay(100, T0)
    with pytest.raises(SequenceGap):
        p.payee.receive(u2, T0)
    p.payee.receive(u1, T0)
    with pytest.raises(DuplicateUpdate):
        p.payee.receive(u1, T0)
    p.payee.receive(u2, T0)
    p.payee.receive(u3, T0)
    with pytest.raises(StaleUpdate):
        p.payee.receive(u1, T0)
    assert p.payee.received == 300


def test_capacity_dust_and_close_margin_are_enforced(ledger: LocalLedger) -> None:
    policy = ChannelPolicy(dust_limit=546, min_lock_seconds=3_600, close_margin=600)
    p = open_pair(ledger, capacity=10_000, policy=policy)
    with pytest.raises(DustError):
        p.payer.pay(100, T0)
    with pytest.raises(AmountError, match="capacity"):
        p.payer.pay(10_000, T0)
    # Change below dust goes to the fee: a single output.
    u = p.payer.pay(10_000 - p.payer.terms.fee - 10, T0)
    p.payee.receive(u, T0, full_check=True)
    assert len(p.payee.close(T0).outputs) == 1
    q = open_pair(ledger, policy=policy)
    late = q.payer.terms.refund_locktime - 600
    with pytest.raises(LockTimeError, match="close margin"):
        q.payer.pay(1_000, late)
    u = q.payer.pay(1_000, late - 1)
    with pytest.raises(LockTimeError, match="close margin"):
        q.payee.receive(u, late)
    assert q.payee.must_close(late)


def test_refund_before_lock_time_fails_and_after_succeeds(ledger: LocalLedger) -> None:
    p = open_pair(ledger)
    lt = p.payer.terms.refund_locktime
    with pytest.raises(LockTimeError):
        p.payer.refund_for_broadcast(lt)
    ledger.set_time(lt - 1)
    with pytest.raises(ChainError, match="nLockTime"):
        ledger.broadcast(p.payer.refund)
    ledger.set_time(lt + 1)
    refund = p.payer.refund_for_broadcast(lt + 1)
    ledger.broadcast(refund)
    p.payer.on_refunded()
    assert refund.outputs[0].value == 100_000 - p.payer.terms.fee


def test_payee_closing_with_an_old_state_is_refused(ledger: LocalLedger) -> None:
    p = open_pair(ledger)
    u1 = p.payer.pay(1_000, T0)
    p.payee.receive(u1, T0)
    old = p.payee.complete_update(u1)
    p.payee.receive(p.payer.pay(1_000, T0), T0)
    latest = p.payee.close(T0)
    ledger.broadcast(latest)
    with pytest.raises(ChainError, match="already spent"):
        ledger.broadcast(old)
    # Before the latest is broadcast, the payer sees what an old close pays.
    q = open_pair(ledger)
    v1 = q.payer.pay(1_000, T0)
    q.payee.receive(v1, T0)
    q.payee.receive(q.payer.pay(1_000, T0), T0)
    q.payer.on_close(q.payee.complete_update(v1))
    assert q.payer.closed_amount == 1_000 < q.payer.paid


def test_refund_after_close_is_a_double_spend(ledger: LocalLedger) -> None:
    p = open_pair(ledger)
    p.payee.receive(p.payer.pay(1_000, T0), T0)
    ledger.broadcast(p.payee.close(T0))
    ledger.set_time(p.payer.terms.refund_locktime + 1)
    with pytest.raises(ChainError, match="already spent"):
        ledger.broadcast(p.payer.refund)


def test_payee_refuses_bad_terms_and_wrong_refund(ledger: LocalLedger) -> None:
    key = PrivateKey.from_random()
    pk = PrivateKey.from_random().public_key.to_bytes()
    script = bytes(PrivateKey.from_random().public_key.P2PKH_script())
    cid = os.urandom(16)
    with pytest.raises(LockTimeError, match="at least"):
        PayeeChannel.accept(cid, 100_000, 100, T0 + 60, pk, script, key, script, T0, POLICY)
    with pytest.raises(FeeError):
        PayeeChannel.accept(cid, 100_000, 0, T0 + 7_200, pk, script, key, script, T0, POLICY)
    with pytest.raises(TermsError, match="capacity"):
        PayeeChannel.accept(cid, 10, 100, T0 + 7_200, pk, script, key, script, T0, POLICY)
    with pytest.raises(TermsError, match="33-byte"):
        PayeeChannel.accept(cid, 100_000, 100, T0 + 7_200, b"\x02" * 5, script, key, script, T0, POLICY)
    p = open_pair(ledger)
    payee = PayeeChannel.accept(cid, 100_000, p.payer.terms.fee, T0 + 7_200, pk, script, key, script, T0, POLICY)
    from microgrid.coordinator.channels.channel import refund_tx
    bad = refund_tx(payee.terms, Outpoint(bytes(32), 0))
    bad.locktime -= 1
    with pytest.raises(LockTimeError):
        payee.sign_refund(Outpoint(bytes(32), 0), bad)
    bad = refund_tx(payee.terms, Outpoint(bytes(32), 0))
    bad.inputs[0].sequence = 0xFFFFFFFF
    with pytest.raises(LockTimeError, match="final"):
        payee.sign_refund(Outpoint(bytes(32), 0), bad)
    assert payee.state == State.ACCEPTED


def test_steps_out_of_order_raise_state_errors(ledger: LocalLedger) -> None:
    p = open_pair(ledger)
    with pytest.raises(StateError):
        p.payer.on_accept(p.payee.terms.payee_key, p.payee.terms.payee_script)
    with pytest.raises(StateError):
        p.payee.sign_refund(p.payer.funding, p.payer.refund)
    with pytest.raises(AmountError, match="nothing to close"):
        p.payee.close(T0)


def test_refund_signed_by_wrong_key_is_refused(ledger: LocalLedger) -> None:
    wallet = Wallet.generate()
    fund(wallet, ledger, 300_000)
    payer = PayerChannel.propose(os.urandom(16), 100_000, PrivateKey.from_random(),
                                 bytes(wallet.receive_script()[1]), T0, 7_200, POLICY)
    payer.on_accept(PrivateKey.from_random().public_key.to_bytes(), b"\x51")
    refund = payer.refund_request(wallet.build_payment([payer.funding_output()]))
    from microgrid.coordinator.channels.txs import sign_input
    from bitcoinx import TxOutput
    wrong = sign_input(refund, 0, PrivateKey.from_random(), TxOutput(100_000, payer.terms.funding_script))
    with pytest.raises(SignatureError):
        payer.on_refund_signature(wrong)
    assert payer.state == State.FUNDING and payer.refund is None
