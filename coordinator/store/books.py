"""Each market interval's book as this coordinator collected it at gate
closure: the signed orders, verbatim.

Clearing is deterministic, so the orders are all it takes to recompute
the cleared interval exactly as our peers computed it. Keeping them lets
a coordinator that restarts between clearing an interval and settling it
still settle it, and pay or be paid for it, instead of leaving its
neighbours unpaid. A book is marked settled once its dues are recorded.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone

import cbor2
from .lean import sqlite_utils

from .database import StoreError


@dataclass(frozen=True)
class StoredBook:
    zone: str
    interval_start: int
    interval_s: int
    book_hash: bytes
    orders: list[bytes]  # each signed order's canonical encoding


class BookStore:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def save(self, book: StoredBook) -> None:
        """Keep a cleared book (once: clearing it again gives the same)."""
        try:
            with self.db.conn:
                self.db.execute(
                    "INSERT OR IGNORE INTO cleared_books (zone, interval_start, interval_s, book_hash, orders, "
                    "settled, recorded_at) VALUES (?, ?, ?, ?, ?, 0, ?)",
                    [book.zone, book.interval_start, book.interval_s, book.book_hash, cbor2.dumps(book.orders),
                     datetime.now(timezone.utc).isoformat()])
        except sqlite3.Error as e:
            raise StoreError(f"keeping the book of {book.zone}/{book.interval_start} failed: {e}") from None

    def mark_settled(self, zone: str, interval_start: int) -> None:
        try:
            with self.db.conn:
                self.db.execute("UPDATE cleared_books SET settled = 1 WHERE zone = ? AND interval_start = ?",
                                [zone, interval_start])
        except sqlite3.Error as e:
            raise StoreError(f"marking {zone}/{interval_start} settled failed: {e}") from None

    def unsettled(self, zone: str, since: int) -> list[StoredBook]:
        """Books of `zone` from intervals starting at or after `since` that
        were cleared here and not settled, oldest first."""
        rows = self.db.execute(
            "SELECT zone, interval_start, interval_s, book_hash, orders FROM cleared_books "
            "WHERE zone = ? AND interval_start >= ? AND settled = 0 ORDER BY interval_start", [zone, since])
        out = []
        for z, start, step, book_hash, orders in rows.fetchall():
            decoded = cbor2.loads(orders)
            out.append(StoredBook(z, int(start), int(step), bytes(book_hash), [bytes(o) for o in decoded]))
        return out

    def is_settled(self, zone: str, interval_start: int) -> bool | None:
        """True or False for a kept book; None when there is none."""
        row = self.db.execute("SELECT settled FROM cleared_books WHERE zone = ? AND interval_start = ?",
                              [zone, interval_start]).fetchone()
        return None if row is None else bool(row[0])

    def since(self, zone: str, since: int) -> list[StoredBook]:
        """Every kept book of `zone` from intervals starting at or after
        `since`, settled or not, oldest first (the web app's price preview)."""
        rows = self.db.execute(
            "SELECT zone, interval_start, interval_s, book_hash, orders FROM cleared_books "
            "WHERE zone = ? AND interval_start >= ? ORDER BY interval_start", [zone, since])
        return [StoredBook(z, int(start), int(step), bytes(h), [bytes(o) for o in cbor2.loads(orders)])
                for z, start, step, h, orders in rows.fetchall()]
