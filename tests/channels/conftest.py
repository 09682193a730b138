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


class FixedClock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 1_700_000_000) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def make_node(tmp_path, name: str, ledger: LocalLedger, clock: FixedClock, funds: int = 0, **kw):
    from bitcoinx import PrivateKey

    from microgrid.coordinator.channels.channel import ChannelPolicy
    from microgrid.coordinator.channels.protocol import ChannelNode
    from microgrid.coordinator.channels.store import ChannelStore

    wallet_path = tmp_path / f"{name}-wallet.json"
    if wallet_path.exists():
        wallet = Wallet.open(wallet_path, "pw")
    else:
        wallet = Wallet.create(wallet_path, "pw", fee_rate=100)
    if funds:
        fund(wallet, ledger, funds)
        wallet.save()
    key_path = tmp_path / f"{name}-identity.hex"
    if not key_path.exists():
        key_path.write_text(PrivateKey.from_random().to_hex())
    identity = PrivateKey.from_hex(key_path.read_text())
    store = ChannelStore(tmp_path / f"{name}-channels.db", clock=clock.now)
    kw.setdefault("policy", ChannelPolicy(min_lock_seconds=3_600, close_margin=600))
    return ChannelNode(identity, wallet, store, ledger, clock, **kw)
