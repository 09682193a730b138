from __future__ import annotations

import pytest
from bitcoinx import PrivateKey, TxOutput

from microgrid.coordinator.channels.chain import ChainError, LocalLedger
from microgrid.coordinator.channels.txs import Outpoint
from microgrid.coordinator.channels.wallet import Wallet

from .conftest import fund


def test_double_spend_is_refused(wallet: Wallet, ledger: LocalLedger) -> None:
    fund(wallet, ledger, 5_000)
    dest = PrivateKey.from_random().public_key.P2PKH_script()
    a = wallet.build_payment([TxOutput(1_000, dest)])
    wallet.release(a)
    b = wallet.build_payment([TxOutput(2_000, dest)])
    ledger.broadcast(a)
    with pytest.raises(ChainError, match="already spent"):
        ledger.broadcast(b)


def test_unknown_input_is_refused(wallet: Wallet) -> None:
    other = LocalLedger()
    fund(wallet, other, 5_000)
    tx = wallet.build_payment([TxOutput(1_000, PrivateKey.from_random().public_key.P2PKH_script())])
    fresh = LocalLedger()
    with pytest.raises(ChainError, match="does not exist"):
        fresh.broadcast(tx)


def test_mining_confirms_mempool_and_outputs_are_tracked(wallet: Wallet, ledger: LocalLedger) -> None:
    fund(wallet, ledger, 5_000)
    tx = wallet.build_payment([TxOutput(1_000, PrivateKey.from_random().public_key.P2PKH_script())])
    txid = ledger.broadcast(tx)
    assert ledger.broadcast(tx) == txid  # resubmission is harmless
    assert ledger.confirmations(txid) == 0
    h = ledger.tip().height
    ledger.mine(2)
    assert ledger.tip().height == h + 2
    assert ledger.confirmations(txid) == 2
    assert ledger.get_output(Outpoint(tx.hash(), 0)).value == 1_000
    assert ledger.get_output(Outpoint(tx.inputs[0].prev_hash, tx.inputs[0].prev_idx)) is None


def test_fee_below_minimum_rate_is_refused() -> None:
    led = LocalLedger(min_fee_rate=500)
    w = Wallet.generate(fee_rate=100)
    fund(w, led, 5_000)
    tx = w.build_payment([TxOutput(1_000, PrivateKey.from_random().public_key.P2PKH_script())])
    with pytest.raises(ChainError, match="fee"):
        led.broadcast(tx)
