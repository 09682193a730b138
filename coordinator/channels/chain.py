"""Chain access: one small interface, and the local ledger behind it.

`ChainBackend` is all the channels and the wallet need: broadcast a
transaction, look up an unspent output, read the tip (height and time, for
nLockTime). `LocalLedger` is the default backend for demos and tests: a
regtest-like ledger in SQLite (`:memory:` or a file) that accepts a
transaction only if

- every input exists and is unspent (no double spends, mempool included),
- every input passes bitcoinx's script interpreter (`txs.verify_transaction`),
- its nLockTime has passed against the ledger's own height and clock
  (`Tx.is_final_for_block(height + 1, now)`; a non-final input sequence is
  what makes the lock time binding, as on the real network; "now" is the
  clock's time, where the real network uses the median time past),
- its outputs are above the dust limit and its fee meets the minimum rate,

and mines blocks on demand. Coins enter through `faucet`, a coinbase-like
transaction paying a script, as a regtest node's `generate` would.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol, TypeVar

from bitcoinx import Script, Tx, TxInput, TxOutput, hex_str_to_hash, hash_to_hex_str

from ..clock import Clock
from .txs import (
    DEFAULT_DUST_LIMIT,
    SEQUENCE_FINAL,
    Outpoint,
    TransactionError,
    fee_for_size,
    txid_hex,
    verify_transaction,
)


class ChainError(Exception):
    """The backend refused a transaction or a lookup failed; the message
    says which transaction, which input and which rule."""


@dataclass(frozen=True)
class ChainTip:
    height: int
    time: int


class ChainBackend(Protocol):
    # Network backends set `blocking = True` (see `call`); LocalLedger has none.

    def broadcast(self, tx: Tx) -> str:
        """Submit `tx`; return its txid (hex) or raise ChainError."""
        ...

    def get_output(self, outpoint: Outpoint) -> TxOutput | None:
        """The output at `outpoint` if it exists and is unspent, else None."""
        ...

    def tip(self) -> ChainTip: ...

    def confirmations(self, txid: str) -> int:
        """What the chain shows of `txid`: -1 unknown, 0 in the mempool,
        else the blocks that include it (its own counted). A channel step
        counts as done only when this is >= 0: a peer's word that it
        broadcast something is not evidence."""
        ...


T = TypeVar("T")
# Chain calls of network backends run here, one at a time, so a slow node or
# ARC never stalls the event loop (CoAP keeps answering). One thread: the
# backends keep no state that needs more, and calls keep their order.
_CHAIN_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chain")


async def call(chain: Any, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, a method of `chain`, from asyncio code: in the chain
    thread when the backend's calls block on the network (`blocking`),
    inline otherwise (the local ledger answers from its own SQLite file at
    once, and tests drive it from the loop's thread). Only chain calls go
    there: channel state and its SQLite store stay on the loop's thread."""
    if not getattr(chain, "blocking", False):
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(_CHAIN_THREAD, lambda: fn(*args))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (height INTEGER PRIMARY KEY, time INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS txs (txid TEXT PRIMARY KEY, raw BLOB NOT NULL, height INTEGER);
CREATE TABLE IF NOT EXISTS outputs (
    txid TEXT NOT NULL, vout INTEGER NOT NULL, value INTEGER NOT NULL, script BLOB NOT NULL,
    spent_by TEXT, PRIMARY KEY (txid, vout));
"""


class LocalLedger:
    """A ledger in SQLite that checks what a BSV node checks for our
    transactions. `clock` gives the ledger's time (Unix seconds); without
    one the ledger's time is the last block's, moved by `set_time`."""

    def __init__(self, path: str = ":memory:", clock: Clock | None = None, dust_limit: int = DEFAULT_DUST_LIMIT,
                 min_fee_rate: int = 0, start_time: int = 1_700_000_000) -> None:
        self.clock = clock
        self.dust_limit = dust_limit
        self.min_fee_rate = min_fee_rate
        self._lock = threading.Lock()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)
        if self.db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0] == 0:
            self.db.execute("INSERT INTO blocks VALUES (0, ?)", (start_time,))
        self._time = self.tip().time

    # -- time ---------------------------------------------------------------
    def now(self) -> int:
        return int(self.clock.now()) if self.clock is not None else self._time

    def set_time(self, t: int) -> None:
        """Move the ledger's time (only without a clock)."""
        if self.clock is not None:
            raise ChainError("this ledger follows a clock; its time cannot be set")
        self._time = t

    def tip(self) -> ChainTip:
        h, t = self.db.execute("SELECT height, time FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
        return ChainTip(int(h), int(t))

    # -- queries ------------------------------------------------------------
    def get_output(self, outpoint: Outpoint) -> TxOutput | None:
        row = self.db.execute("SELECT value, script, spent_by FROM outputs WHERE txid=? AND vout=?",
                              (hash_to_hex_str(outpoint.txid), outpoint.index)).fetchone()
        if row is None or row[2] is not None:
            return None
        return TxOutput(int(row[0]), Script(bytes(row[1])))

    def spent_by(self, outpoint: Outpoint) -> str | None:
        row = self.db.execute("SELECT spent_by FROM outputs WHERE txid=? AND vout=?",
                              (hash_to_hex_str(outpoint.txid), outpoint.index)).fetchone()
        return None if row is None else row[0]

    def transaction(self, txid: str) -> Tx | None:
        row = self.db.execute("SELECT raw FROM txs WHERE txid=?", (txid,)).fetchone()
        return None if row is None else Tx.from_bytes(bytes(row[0]))

    def confirmations(self, txid: str) -> int:
        """0 in the mempool, -1 unknown, else blocks including its own."""
        row = self.db.execute("SELECT height FROM txs WHERE txid=?", (txid,)).fetchone()
        if row is None:
            return -1
        if row[0] is None:
            return 0
        return self.tip().height - int(row[0]) + 1

    def mempool(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT txid FROM txs WHERE height IS NULL ORDER BY rowid")]

    # -- writes -------------------------------------------------------------
    def broadcast(self, tx: Tx) -> str:
        txid = txid_hex(tx)
        with self._lock:
            if self.db.execute("SELECT 1 FROM txs WHERE txid=?", (txid,)).fetchone():
                return txid  # already known: a resubmission is harmless
            if tx.is_coinbase():
                raise ChainError(f"{txid}: coinbase transactions only come from faucet()")
            prevouts: list[TxOutput] = []
            for n, txin in enumerate(tx.inputs):
                prev = Outpoint(txin.prev_hash, txin.prev_idx)
                row = self.db.execute("SELECT value, script, spent_by FROM outputs WHERE txid=? AND vout=?",
                                      (hash_to_hex_str(prev.txid), prev.index)).fetchone()
                if row is None:
                    raise ChainError(f"{txid}: input {n} spends {prev}, which does not exist")
                if row[2] is not None:
                    raise ChainError(f"{txid}: input {n} spends {prev}, already spent by {row[2]}")
                prevouts.append(TxOutput(int(row[0]), Script(bytes(row[1]))))
            tip = self.tip()
            now = self.now()
            if not tx.is_final_for_block(tip.height + 1, now):
                raise ChainError(f"{txid}: not final: nLockTime {tx.locktime} not reached "
                                 f"(height {tip.height + 1}, time {now})")
            try:
                fee = verify_transaction(tx, prevouts, dust_limit=self.dust_limit)
            except TransactionError as e:
                raise ChainError(f"{txid}: {e}") from e
            want = fee_for_size(tx.size(), self.min_fee_rate)
            if fee < want:
                raise ChainError(f"{txid}: fee {fee} sat for {tx.size()} bytes: expected at least {want} "
                                 f"({self.min_fee_rate} sat/kB)")
            self._insert(tx, txid, None)
        return txid

    def _insert(self, tx: Tx, txid: str, height: int | None) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO txs VALUES (?, ?, ?)", (txid, tx.to_bytes(), height))
            if not tx.is_coinbase():
                for txin in tx.inputs:
                    db.execute("UPDATE outputs SET spent_by=? WHERE txid=? AND vout=?",
                               (txid, hash_to_hex_str(txin.prev_hash), txin.prev_idx))
            for n, out in enumerate(tx.outputs):
                db.execute("INSERT INTO outputs VALUES (?, ?, ?, ?, NULL)", (txid, n, out.value, bytes(out.script_pubkey)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def mine(self, blocks: int = 1, time: int | None = None) -> ChainTip:
        """Mine `blocks` blocks; the mempool goes into the first. A block's
        time is `time`, else the ledger's time."""
        with self._lock:
            tip = self.tip()
            t = self.now() if time is None else time
            if self.clock is None and time is not None:
                self._time = time
            for i in range(blocks):
                height = tip.height + 1 + i
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute("INSERT INTO blocks VALUES (?, ?)", (height, max(t, tip.time)))
                if i == 0:
                    self.db.execute("UPDATE txs SET height=? WHERE height IS NULL", (height,))
                self.db.execute("COMMIT")
        return self.tip()

    def evict(self, txid: str) -> None:
        """Drop an unconfirmed transaction, as a node's mempool may (too low
        a fee, a restart, a double spend mined elsewhere): its inputs are
        unspent again. For demos and tests of a broadcast the chain lost."""
        with self._lock:
            row = self.db.execute("SELECT height FROM txs WHERE txid=?", (txid,)).fetchone()
            if row is None or row[0] is not None:
                raise ChainError(f"{txid}: not in the mempool")
            if self.db.execute("SELECT 1 FROM outputs WHERE txid=? AND spent_by IS NOT NULL", (txid,)).fetchone():
                raise ChainError(f"{txid}: a transaction in the mempool spends it; evict that first")
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM outputs WHERE txid=?", (txid,))
            self.db.execute("UPDATE outputs SET spent_by=NULL WHERE spent_by=?", (txid,))
            self.db.execute("DELETE FROM txs WHERE txid=?", (txid,))
            self.db.execute("COMMIT")

    def faucet(self, script: Script | bytes, value: int) -> Outpoint:
        """Create a new mined output of `value` sat paying `script`."""
        with self._lock:
            height = self.tip().height + 1
            n = self.db.execute("SELECT COUNT(*) FROM txs").fetchone()[0]
            coinbase = Tx(1, [TxInput(bytes(32), 0xFFFFFFFF, Script() << height << n, SEQUENCE_FINAL)],
                          [TxOutput(value, script if isinstance(script, Script) else Script(script))], 0)
            txid = txid_hex(coinbase)
            self._insert(coinbase, txid, height)
            self.db.execute("INSERT INTO blocks VALUES (?, ?)", (height, max(self.now(), self.tip().time)))
        return Outpoint(hex_str_to_hash(txid), 0)

    def close(self) -> None:
        self.db.close()
