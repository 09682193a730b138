"""A second, independent BSV implementation checks what we build.

Every transaction the project writes passes bitcoinx's interpreter before
it is stored or sent (channels/txs.py). That proves little if bitcoinx and
our use of it share a mistake (a sighash detail, a script form, a
multisig quirk), so the tests check the same transactions again with the
official BSV SDK for Python (`bsv-sdk`): its own transaction parser, its
own BIP143/FORKID signature hashing and its own script interpreter
(`bsv.script.spend.Spend`), with none of bitcoinx's code.
"""

from __future__ import annotations

from typing import Sequence

from bitcoinx import Tx, TxOutput, hash_to_hex_str

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.txs import Outpoint

import bsv  # noqa: F401 - the tests using this module are skipped where bsv-sdk is not installed
from bsv.script.script import Script as BsvScript
from bsv.script.spend import Spend
from bsv.transaction import Transaction as BsvTx


class IndependentCheckFailed(AssertionError):
    pass


def check_with_bsv_sdk(tx: Tx, prevouts: Sequence[TxOutput]) -> None:
    """Raise IndependentCheckFailed unless every input of `tx` (given the
    outputs it spends, in input order) validates in bsv-sdk, and bsv-sdk
    reads the same transaction (txid) from our bytes."""
    raw = tx.to_bytes()
    btx = BsvTx.from_hex(raw)
    if btx is None or btx.txid() != tx.hex_hash():
        raise IndependentCheckFailed(f"bsv-sdk parses {tx.hex_hash()} differently")
    if len(prevouts) != len(btx.inputs):
        raise IndependentCheckFailed(f"{len(prevouts)} prevouts for {len(btx.inputs)} inputs")
    for n, inp in enumerate(btx.inputs):
        inp.satoshis = prevouts[n].value
        inp.locking_script = BsvScript(bytes(prevouts[n].script_pubkey))
    for i, inp in enumerate(btx.inputs):
        try:
            ok = Spend({
                "sourceTXID": inp.source_txid,
                "sourceOutputIndex": inp.source_output_index,
                "sourceSatoshis": prevouts[i].value,
                "lockingScript": BsvScript(bytes(prevouts[i].script_pubkey)),
                "transactionVersion": btx.version,
                "otherInputs": [x for j, x in enumerate(btx.inputs) if j != i],
                "outputs": btx.outputs,
                "inputIndex": i,
                "unlockingScript": inp.unlocking_script,
                "inputSequence": inp.sequence,
                "lockTime": btx.locktime,
            }).validate()
        except Exception as e:  # bsv-sdk raises on a failed script
            raise IndependentCheckFailed(f"{tx.hex_hash()} input {i}: bsv-sdk refuses it: {e}") from None
        if not ok:
            raise IndependentCheckFailed(f"{tx.hex_hash()} input {i}: bsv-sdk refuses it")
    if sum(o.satoshis for o in btx.outputs) > sum(p.value for p in prevouts):
        raise IndependentCheckFailed(f"{tx.hex_hash()} pays out more than it spends")


class CheckedLedger(LocalLedger):
    """A local ledger that also has bsv-sdk check every transaction before
    it takes it: a run on it proves each funding, close and refund the
    project broadcast valid in both implementations."""

    checked = 0

    def broadcast(self, tx: Tx) -> str:
        if self.transaction(tx.hex_hash()) is None:
            prevouts = []
            for txin in tx.inputs:
                out = self._any_output(Outpoint(txin.prev_hash, txin.prev_idx))
                if out is None:
                    return super().broadcast(tx)  # the ledger refuses it, with its reason
                prevouts.append(out)
            check_with_bsv_sdk(tx, prevouts)
            self.checked += 1
        return super().broadcast(tx)

    def _any_output(self, op: Outpoint) -> TxOutput | None:
        prev = self.transaction(hash_to_hex_str(op.txid))
        return None if prev is None or op.index >= len(prev.outputs) else prev.outputs[op.index]
