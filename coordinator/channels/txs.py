"""Transaction building blocks shared by the wallet and the channels.

bitcoinx 0.9 has no signing helper, so signing is spelled out here: the
BIP-143 (FORKID) signature hash for SIGHASH_ALL|FORKID, an ECDSA signature
over that hash (`hasher=None`) and the sighash byte appended.

`verify_transaction` runs bitcoinx's script interpreter over every input
(against the outputs it spends) and checks the amounts; nothing built in
this package is stored or sent without passing it.

BSV consensus has no CHECKLOCKTIMEVERIFY/CHECKSEQUENCEVERIFY, so channels
use a bare 2-of-2 CHECKMULTISIG output (not P2SH, which BSV no longer
evaluates) and a refund pre-signed with an nLockTime whose input has a
non-final sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bitcoinx import (
    InterpreterError,
    InterpreterLimits,
    Ops,
    PrivateKey,
    PublicKey,
    Script,
    SigHash,
    Tx,
    TxInput,
    TxOutput,
    TxInputContext,
    hash_to_hex_str,
)

SIGHASH_ALL_FORKID = SigHash(SigHash.ALL | SigHash.FORKID)
SEQUENCE_FINAL = 0xFFFFFFFF
# Any sequence below final makes nLockTime binding; this is the usual choice.
SEQUENCE_LOCKED = 0xFFFFFFFE
LOCKTIME_THRESHOLD = 500_000_000  # below: block height, at or above: Unix time

# Since node 1.0.11 BSV relays outputs of any positive value; channels and the
# wallet take the limit from config so a stricter network can raise it.
DEFAULT_DUST_LIMIT = 1
# sat per 1,000 bytes; from config in practice.
DEFAULT_FEE_RATE = 100

# Placeholder sizes for fee estimates: a low-S DER signature is at most 71
# bytes + 1 sighash byte; a compressed public key is 33 bytes.
_MAX_SIG = bytes(72)
_PUBKEY = bytes(33)


class TransactionError(ValueError):
    """A transaction fails a script, amount, fee or dust check."""


@dataclass(frozen=True)
class Outpoint:
    """A transaction output's address: `txid` in internal byte order."""

    txid: bytes
    index: int

    def __str__(self) -> str:
        return f"{hash_to_hex_str(self.txid)}:{self.index}"


def txid_hex(tx: Tx) -> str:
    return str(tx.hex_hash())


def p2pkh_script(key: PublicKey) -> Script:
    return key.P2PKH_script()


def multisig_script(payer: PublicKey, payee: PublicKey) -> Script:
    """Bare 2-of-2: `OP_2 <payer> <payee> OP_2 OP_CHECKMULTISIG`; the
    spending script pushes `OP_0 <payer sig> <payee sig>` in that order."""
    return (Script() << Ops.OP_2 << payer.to_bytes(compressed=True) << payee.to_bytes(compressed=True)
            << Ops.OP_2 << Ops.OP_CHECKMULTISIG)


def multisig_script_sig(payer_sig: bytes, payee_sig: bytes) -> Script:
    return Script() << b"" << payer_sig << payee_sig


def p2pkh_script_sig(sig: bytes, key: PublicKey) -> Script:
    return Script() << sig << key.to_bytes(compressed=True)


def sighash(tx: Tx, index: int, prevout: TxOutput) -> bytes:
    return bytes(tx.signature_hash(index, prevout.value, prevout.script_pubkey, SIGHASH_ALL_FORKID))


def sign_input(tx: Tx, index: int, key: PrivateKey, prevout: TxOutput) -> bytes:
    """DER signature + sighash byte for input `index` spending `prevout`."""
    return bytes(key.sign(sighash(tx, index, prevout), hasher=None)) + bytes([SIGHASH_ALL_FORKID])


def signature_valid(tx: Tx, index: int, key: PublicKey, prevout: TxOutput, sig: bytes) -> bool:
    """Check one party's signature on input `index` (before the script is complete)."""
    if len(sig) < 9 or sig[-1] != SIGHASH_ALL_FORKID:
        return False
    try:
        return bool(key.verify_der_signature(sig[:-1], sighash(tx, index, prevout), hasher=None))
    except Exception:  # bitcoinx raises InvalidSignature on malformed DER
        return False


def fee_for_size(size: int, fee_rate: int) -> int:
    """Fee in sat for `size` bytes at `fee_rate` sat/kB, rounded up."""
    return math.ceil(size * fee_rate / 1000)


def estimate_size(n_p2pkh_inputs: int, n_multisig_inputs: int, outputs: list[TxOutput]) -> int:
    """Size of a transaction once signed (signatures at their largest)."""
    inputs = ([TxInput(bytes(32), 0, Script() << _MAX_SIG << _PUBKEY, SEQUENCE_FINAL)] * n_p2pkh_inputs
              + [TxInput(bytes(32), 0, multisig_script_sig(_MAX_SIG, _MAX_SIG), SEQUENCE_FINAL)]
              * n_multisig_inputs)
    return int(Tx.size_io(inputs, outputs))


def verify_transaction(tx: Tx, prevouts: list[TxOutput], dust_limit: int = DEFAULT_DUST_LIMIT,
                       min_fee: int = 0) -> int:
    """Run bitcoinx's interpreter over every input and check amounts.

    `prevouts[i]` is the output input `i` spends. Returns the fee. Raises
    TransactionError naming the input or output and the rule it breaks.
    """
    if len(prevouts) != len(tx.inputs):
        raise TransactionError(f"{len(prevouts)} previous outputs for {len(tx.inputs)} inputs")
    if not tx.inputs or not tx.outputs:
        raise TransactionError(f"transaction with {len(tx.inputs)} inputs and {len(tx.outputs)} outputs")
    for n, out in enumerate(tx.outputs):
        if out.value < dust_limit:
            raise TransactionError(f"output {n} value {out.value} sat: expected at least the dust limit {dust_limit}")
    limits = InterpreterLimits.RESTRICTIVE
    for n, (txin, prevout) in enumerate(zip(tx.inputs, prevouts)):
        try:
            ok = TxInputContext(tx, n, prevout).verify_input(limits, True)
        except InterpreterError as e:
            raise TransactionError(f"input {n} of {txid_hex(tx)} fails the script interpreter: {e}") from e
        if not ok:
            raise TransactionError(f"input {n} of {txid_hex(tx)} evaluates to false in the script interpreter")
    fee = sum(p.value for p in prevouts) - tx.total_output_value()
    if fee < min_fee:
        raise TransactionError(f"fee {fee} sat of {txid_hex(tx)}: expected at least {min_fee}")
    return int(fee)


def output_of(tx: Tx, index: int) -> TxOutput:
    if not 0 <= index < len(tx.outputs):
        raise TransactionError(f"output index {index}: transaction {txid_hex(tx)} has {len(tx.outputs)} outputs")
    return tx.outputs[index]


def tx_from_bytes(raw: bytes) -> Tx:
    try:
        tx = Tx.from_bytes(raw)
    except Exception as e:  # bitcoinx raises assorted errors on truncated input
        raise TransactionError(f"undecodable transaction ({len(raw)} bytes): {e}") from e
    if tx.to_bytes() != raw:
        raise TransactionError("transaction bytes are not canonical (trailing data or extended format)")
    return tx


def new_output(value: int, script: Script | bytes) -> TxOutput:
    return TxOutput(value, script if isinstance(script, Script) else Script(script))
