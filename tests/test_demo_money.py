"""microgrid/demo/money.py: the per-seller reconciliation, on made-up
settlements and channels (no processes): it holds when every satoshi is
explained, and says so when one is missing."""

from __future__ import annotations

from types import SimpleNamespace as NS
from typing import Any

from microgrid.demo.money import reconcile

SELLER, BUYER = "02" + "aa" * 32, "03" + "bb" * 32
SCRIPT = b"\x76\xa9payee"


def p2p(wh: int, price: int) -> Any:
    msat = wh * price
    return NS(kind="p2p", payer=BUYER, payee=SELLER, wh=wh, msat=msat, sats=-(-msat // 1000))


class Ledger:
    def __init__(self, txids: set[str]) -> None:
        self.txids = txids

    def transaction(self, txid: str) -> Any:
        return object() if txid in self.txids else None


def world(held: int, signed: list[int], closed_to_payee: int | None, on_ledger: bool = True) -> tuple[Any, Any]:
    from bitcoinx import Script, Tx, TxInput, TxOutput

    from microgrid.coordinator.channels.txs import txid_hex

    tx = None
    if closed_to_payee is not None:
        tx = Tx(1, [TxInput(b"\0" * 32, 0, Script(), 0xFFFFFFFF)],
                [TxOutput(closed_to_payee, Script(SCRIPT)), TxOutput(5000, Script(b"\x76\xa9payer"))], 0)
    payee_ch = NS(latest=NS(amount=held), closing_tx=tx, terms=NS(payee_script=SCRIPT))
    seller = NS(public_hex=SELLER, node=NS(channels={b"c1": NS(role="payee", channel=payee_ch, peer=bytes.fromhex(BUYER))},
                                          store=NS(events=lambda cid: [])))
    events = [{"kind": "trade-stream", "amount": a} for a in signed]
    buyer = NS(public_hex=BUYER, node=NS(channels={b"c1": NS(role="payer", channel=None, peer=bytes.fromhex(SELLER))},
                                         store=NS(events=lambda cid: events)))
    ledger = Ledger({txid_hex(tx)} if tx is not None and on_ledger else set())
    return [seller, buyer], ledger


SETTLED = {0: NS(payments=[p2p(384, 150)]), 900: NS(payments=[p2p(100, 61), p2p(10, 40)])}


def test_every_satoshi_explained_reconciles() -> None:
    # 384 Wh x 150 = 57.6 sat -> 58; 6.1 -> 7; 0.4 -> 1: owed 66, value 64.1.
    traders, ledger = world(held=66, signed=[60, 6], closed_to_payee=66)
    [row] = reconcile(SETTLED, traders, {SELLER: "alder"}, ledger)
    assert (row.delivered_wh, row.value_msat, row.owed_sat, row.pairs, row.intervals) == (494, 64100, 66, 3, 2)
    assert (row.paid_sat, row.held_sat, row.on_ledger_sat, row.ahead_sat) == (66, 66, 66, 0)
    assert row.reconciles and row.within_1_sat_per_interval
    assert "reconciles" in row.line() and "DOES NOT" not in row.line()


def test_a_close_paying_less_than_held_does_not_reconcile() -> None:
    traders, ledger = world(held=66, signed=[66], closed_to_payee=65)
    [row] = reconcile(SETTLED, traders, {SELLER: "alder"}, ledger)
    assert not row.reconciles and "DOES NOT RECONCILE" in row.line()


def test_a_closing_tx_missing_from_the_ledger_counts_as_still_open() -> None:
    traders, ledger = world(held=66, signed=[66], closed_to_payee=66, on_ledger=False)
    [row] = reconcile(SETTLED, traders, {SELLER: "alder"}, ledger)
    assert row.on_ledger_sat == 0 and row.channels_open == 1 and not row.reconciles


def test_paid_ahead_is_shown_and_far_ahead_breaks_the_1_sat_bar() -> None:
    traders, ledger = world(held=70, signed=[70], closed_to_payee=70)
    [row] = reconcile(SETTLED, traders, {SELLER: "alder"}, ledger)
    assert row.ahead_sat == 4 and row.reconciles  # explained: a credit of the buyer's
    assert not row.within_1_sat_per_interval  # 70 vs 64.1 over 2 intervals
    assert "+4 ahead" in row.line()
