"""Fixtures for channel tests: funded wallets on a local ledger."""

from __future__ import annotations

import pytest

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.wallet import Utxo, Wallet


def fund(wallet: Wallet, ledger: LocalLedger, value: int) -> Utxo:
    """Pay `value` sat from the ledger's faucet to a fresh wallet key."""
    index, script = wallet.receive_script()
    op = ledger.faucet(script, value)
    utxo = Utxo(op, value, index)
    wallet.add_utxo(utxo)
    return utxo


@pytest.fixture
def ledger() -> LocalLedger:
    led = LocalLedger()
    yield led
    led.close()


@pytest.fixture
def wallet() -> Wallet:
    return Wallet.generate(fee_rate=100)
