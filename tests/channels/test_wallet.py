from __future__ import annotations

import json
from pathlib import Path

import pytest
from bitcoinx import PrivateKey, Script, TxOutput

from microgrid.coordinator.channels.chain import ChainError, LocalLedger
from microgrid.coordinator.channels.txs import TransactionError, fee_for_size, verify_transaction
from microgrid.coordinator.channels.wallet import InsufficientFunds, Wallet, WalletError

from .conftest import fund


def test_wallet_file_is_encrypted_and_reopens_with_the_password(tmp_path: Path, ledger: LocalLedger) -> None:
    path = tmp_path / "wallet.json"
    w = Wallet.create(path, "correct horse", fee_rate=250)
    fund(w, ledger, 50_000)
    w.save()
    text = path.read_text()
    assert w.root.to_extended_key_string() not in text
    assert w.root.to_hex() not in text
    again = Wallet.open(path, "correct horse")
    assert again.root.to_extended_key_string() == w.root.to_extended_key_string()
    assert again.balance() == 50_000 and again.fee_rate == 250
    assert again.next_index == w.next_index


def test_wrong_password_or_tampered_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    Wallet.create(path, "pw")
    with pytest.raises(WalletError, match="wrong password"):
        Wallet.open(path, "not it")
    doc = json.loads(path.read_text())
    ct = bytearray.fromhex(doc["key"]["ciphertext"])
    ct[0] ^= 1
    doc["key"]["ciphertext"] = ct.hex()
    path.write_text(json.dumps(doc))
    with pytest.raises(WalletError):
        Wallet.open(path, "pw")


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    Wallet.create(path, "pw")
    with pytest.raises(WalletError, match="exists"):
        Wallet.create(path, "pw")


def test_payment_has_change_fee_at_rate_and_passes_interpreter_and_ledger(wallet: Wallet, ledger: LocalLedger) -> None:
    fund(wallet, ledger, 10_000)
    fund(wallet, ledger, 3_000)
    dest = PrivateKey.from_random().public_key.P2PKH_script()
    tx = wallet.build_payment([TxOutput(2_000, dest)])
    assert len(tx.inputs) == 1  # the smallest coin that covers it
    assert len(tx.outputs) == 2
    prevout_value = 3_000
    fee = prevout_value - tx.total_output_value()
    assert fee >= fee_for_size(tx.size(), wallet.fee_rate)
    assert fee <= fee_for_size(tx.size() + 4, wallet.fee_rate)
    ledger.broadcast(tx)
    wallet.scan(tx)
    assert wallet.balance() == 10_000 + tx.outputs[1].value


def test_coin_selection_combines_coins_and_reports_shortfall(wallet: Wallet, ledger: LocalLedger) -> None:
    for v in (1_000, 1_000, 1_000):
        fund(wallet, ledger, v)
    dest = PrivateKey.from_random().public_key.P2PKH_script()
    tx = wallet.build_payment([TxOutput(2_500, dest)])
    assert len(tx.inputs) == 3
    ledger.broadcast(tx)
    with pytest.raises(InsufficientFunds, match="have 0"):
        wallet.build_payment([TxOutput(10, dest)])


def test_reserved_coins_are_not_selected_twice_until_released(wallet: Wallet, ledger: LocalLedger) -> None:
    fund(wallet, ledger, 5_000)
    dest = PrivateKey.from_random().public_key.P2PKH_script()
    tx = wallet.build_payment([TxOutput(1_000, dest)])
    with pytest.raises(InsufficientFunds):
        wallet.build_payment([TxOutput(1_000, dest)])
    wallet.release(tx)
    wallet.build_payment([TxOutput(1_000, dest)])


def test_dust_output_is_refused(ledger: LocalLedger) -> None:
    w = Wallet.generate(dust_limit=546)
    fund(w, ledger, 5_000)
    with pytest.raises(WalletError, match="dust"):
        w.build_payment([TxOutput(100, PrivateKey.from_random().public_key.P2PKH_script())])


def test_tampered_signature_fails_the_interpreter_and_the_ledger(wallet: Wallet, ledger: LocalLedger) -> None:
    fund(wallet, ledger, 5_000)
    tx = wallet.build_payment([TxOutput(1_000, PrivateKey.from_random().public_key.P2PKH_script())])
    tx.outputs[0].value = 1_001  # signature no longer covers the outputs
    with pytest.raises(ChainError, match="interpreter"):
        ledger.broadcast(tx)
    key = wallet.key(0, 0)
    with pytest.raises(TransactionError, match="input 0"):
        verify_transaction(tx, [TxOutput(5_000, key.public_key.P2PKH_script())])
