"""Channel state in SQLite (sqlite-utils; WAL, synchronous=FULL).

Every state change is one transaction that is on disk when `commit`
returns: the payee stores an update before it acknowledges it, the payer
stores an update before it sends it. `channels` holds each channel's
current state (CBOR record); `updates` keeps every signed update, and
`events` the streaming journal (increments, readings, payments, relay
changes) so a dispute can be replayed.

Private keys are not stored here: a channel row names the wallet's
channel key index and `load_*` re-derives the key from the wallet.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import cbor2
from ..store.lean import sqlite_utils
from bitcoinx import PrivateKey, Tx

from .channel import ChannelPolicy, PayeeChannel, PayerChannel, State, Terms, Update
from .txs import Outpoint

SCHEMA_VERSION = 1


def _terms_rec(t: Terms) -> dict[str, Any]:
    return asdict(t)


def _outpoint_rec(o: Outpoint | None) -> list | None:
    return None if o is None else [o.txid, o.index]


def _outpoint(v: list | None) -> Outpoint | None:
    return None if v is None else Outpoint(bytes(v[0]), int(v[1]))


def _update_rec(u: Update | None) -> list | None:
    return None if u is None else [u.seq, u.amount, u.payer_sig]


def _update(v: list | None) -> Update | None:
    return None if v is None else Update(int(v[0]), int(v[1]), bytes(v[2]))


def _tx(v: bytes | None) -> Tx | None:
    return None if v is None else Tx.from_bytes(v)


def payer_record(ch: PayerChannel) -> dict[str, Any]:
    return {"terms": _terms_rec(ch.terms), "policy": asdict(ch.policy), "state": ch.state.value,
            "funding": _outpoint_rec(ch.funding),
            "funding_tx": ch.funding_tx.to_bytes() if ch.funding_tx else None,
            "refund": ch.refund.to_bytes() if ch.refund else None, "sent": _update_rec(ch.sent),
            "acked": [ch.acked_seq, ch.acked_amount], "closing_txid": ch.closing_txid,
            "closed_amount": ch.closed_amount}


def payer_from_record(r: dict[str, Any], key: PrivateKey) -> PayerChannel:
    return PayerChannel(Terms(**r["terms"]), key, ChannelPolicy(**r["policy"]), State(r["state"]),
                        _outpoint(r["funding"]), _tx(r["funding_tx"]), _tx(r["refund"]), _update(r["sent"]),
                        int(r["acked"][0]), int(r["acked"][1]), r["closing_txid"], r["closed_amount"])


def payee_record(ch: PayeeChannel) -> dict[str, Any]:
    return {"terms": _terms_rec(ch.terms), "policy": asdict(ch.policy), "state": ch.state.value,
            "funding": _outpoint_rec(ch.funding), "latest": _update_rec(ch.latest),
            "closing_tx": ch.closing_tx.to_bytes() if ch.closing_tx else None,
            "payer_notified": ch.payer_notified, "funding_confirmed": ch.funding_confirmed,
            "funding_lost": ch.funding_lost}


def payee_from_record(r: dict[str, Any], key: PrivateKey) -> PayeeChannel:
    return PayeeChannel(Terms(**r["terms"]), key, ChannelPolicy(**r["policy"]), State(r["state"]),
                        _outpoint(r["funding"]), _update(r["latest"]), _tx(r["closing_tx"]),
                        bool(r.get("payer_notified", False)), bool(r.get("funding_confirmed", False)),
                        bool(r.get("funding_lost", False)))


class ChannelStore:
    """SQLite persistence for channels. `path` is a file (or ":memory:" in
    tests that do not reopen)."""

    def __init__(self, path: Path | str, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self.clock = clock
        self.db = sqlite_utils.Database(self.path)
        self.conn = self.db.conn
        self.conn.isolation_level = None  # explicit BEGIN/COMMIT below
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        db = self.db
        if "channels" not in db.table_names():
            db.table("channels").create({"id": bytes, "role": str, "peer": bytes, "peer_uri": str, "key_index": int,
                                   "state": str, "record": bytes, "updated_at": float}, pk="id")
        if "updates" not in db.table_names():
            db.table("updates").create({"channel_id": bytes, "seq": int, "amount": int, "sig": bytes, "role": str,
                                  "acked": int, "at": float}, pk=("channel_id", "seq"))
        if "events" not in db.table_names():
            db.table("events").create({"id": int, "channel_id": bytes, "at": float, "kind": str, "wh": float,
                                 "amount": int, "seq": int, "detail": str}, pk="id")
            db.table("events").create_index(["channel_id", "id"])
        self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- transactions ---------------------------------------------------------
    def _tx(self) -> "_Txn":
        return _Txn(self.conn)

    def save_channel(self, role: str, ch: PayerChannel | PayeeChannel, peer: bytes, peer_uri: str,
                     key_index: int, update: Update | None = None, acked: bool = False) -> None:
        """Write a channel's state and, if given, a signed update, atomically
        and durably (the caller acknowledges or sends only afterwards)."""
        rec = payer_record(ch) if isinstance(ch, PayerChannel) else payee_record(ch)
        now = self.clock()
        with self._tx():
            self.conn.execute(
                "INSERT INTO channels (id, role, peer, peer_uri, key_index, state, record, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET state=excluded.state, "
                "record=excluded.record, updated_at=excluded.updated_at, peer_uri=excluded.peer_uri",
                (ch.terms.channel_id, role, peer, peer_uri, key_index, ch.state.value, cbor2.dumps(rec), now))
            if update is not None:
                self.conn.execute(
                    "INSERT INTO updates (channel_id, seq, amount, sig, role, acked, at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(channel_id, seq) DO UPDATE SET acked=excluded.acked",
                    (ch.terms.channel_id, update.seq, update.amount, update.payer_sig, role, int(acked), now))

    def mark_acked(self, ch: PayerChannel, peer: bytes, peer_uri: str, key_index: int) -> None:
        rec = payer_record(ch)
        with self._tx():
            self.conn.execute("UPDATE channels SET record=?, state=?, updated_at=? WHERE id=?",
                              (cbor2.dumps(rec), ch.state.value, self.clock(), ch.terms.channel_id))
            self.conn.execute("UPDATE updates SET acked=1 WHERE channel_id=? AND seq=?",
                              (ch.terms.channel_id, ch.acked_seq))

    def delete_channel(self, channel_id: bytes) -> None:
        """Forget a channel that never held funds (an open that stopped
        before the funding was broadcast), so failed opens do not pile up."""
        with self._tx():
            self.conn.execute("DELETE FROM updates WHERE channel_id=?", (channel_id,))
            self.conn.execute("DELETE FROM events WHERE channel_id=?", (channel_id,))
            self.conn.execute("DELETE FROM channels WHERE id=?", (channel_id,))

    # -- reads ----------------------------------------------------------------
    def rows(self, role: str | None = None) -> Iterator[dict[str, Any]]:
        q = "SELECT id, role, peer, peer_uri, key_index, state, record FROM channels"
        args: tuple = ()
        if role:
            q += " WHERE role=?"
            args = (role,)
        for r in self.conn.execute(q + " ORDER BY rowid", args):
            yield {"id": bytes(r[0]), "role": r[1], "peer": bytes(r[2]), "peer_uri": r[3], "key_index": r[4],
                   "state": r[5], "record": cbor2.loads(r[6])}

    def updates(self, channel_id: bytes) -> list[dict[str, Any]]:
        return [{"seq": r[0], "amount": r[1], "sig": bytes(r[2]), "acked": bool(r[3]), "at": r[4]}
                for r in self.conn.execute("SELECT seq, amount, sig, acked, at FROM updates WHERE channel_id=? "
                                           "ORDER BY seq", (channel_id,))]

    # -- streaming journal ----------------------------------------------------
    def record_event(self, channel_id: bytes, at: float, kind: str, wh: float | None = None,
                     amount: int | None = None, seq: int | None = None, detail: str = "") -> None:
        with self._tx():
            self.conn.execute("INSERT INTO events (channel_id, at, kind, wh, amount, seq, detail) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?)", (channel_id, at, kind, wh, amount, seq, detail))

    def events(self, channel_id: bytes) -> list[dict[str, Any]]:
        return [{"at": r[0], "kind": r[1], "wh": r[2], "amount": r[3], "seq": r[4], "detail": r[5]}
                for r in self.conn.execute("SELECT at, kind, wh, amount, seq, detail FROM events "
                                           "WHERE channel_id=? ORDER BY id", (channel_id,))]

    def close(self) -> None:
        self.conn.close()


class _Txn:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
