"""Opening the coordinator's SQLite database: durability settings and schema.

Only store/ talks SQL. The database runs in WAL mode with synchronous=FULL:
a transaction that has committed survives a killed process and a power
cut, which is what lets the coordinator acknowledge a reading right after
its commit. The schema is versioned with PRAGMA user_version; each
migration runs once, in order, inside a transaction.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

from .lean import sqlite_utils


class StoreError(RuntimeError):
    """The database cannot be opened or written (corrupt, full disk, locked)."""


def _v1(db: sqlite_utils.Database) -> None:
    db.table("devices").create(
        {
            "device_id": str,
            "public_key": str,
            "name": str,
            "registered_at": str,
        },
        pk="device_id",
    )
    db.table("readings").create(
        {
            "id": int,
            "device_id": str,
            "seq": int,
            "time": float,
            "import_wh": int,
            "export_wh": int,
            "power_w": float,
            "voltage_v": float,
            "extra": str,
            "source": str,
            "received_at": str,
            "cose": bytes,
        },
        pk="id",
        not_null={"device_id", "seq", "time", "import_wh", "export_wh", "source", "received_at"},
    )
    db.table("readings").create_index(["device_id", "seq"], unique=True, index_name="readings_device_seq")
    db.table("readings").create_index(["time"], index_name="readings_time")


def _v2(db: sqlite_utils.Database) -> None:
    # What each settled interval says one coordinator owes another for
    # energy traded between them (store/dues.py).
    db.table("p2p_dues").create(
        {"interval_start": int, "payer": str, "payee": str, "wh": int, "sats": int, "recorded_at": str},
        pk=("interval_start", "payer", "payee"),
        not_null={"wh", "sats", "recorded_at"},
    )


def _v3(db: sqlite_utils.Database) -> None:
    # Each interval's book as this coordinator cleared it (store/books.py).
    db.table("cleared_books").create(
        {"zone": str, "interval_start": int, "interval_s": int, "book_hash": bytes, "orders": bytes,
         "settled": int, "recorded_at": str},
        pk=("zone", "interval_start"),
        not_null={"interval_s", "book_hash", "orders", "settled", "recorded_at"},
        defaults={"settled": 0},
    )


def _v4(db: sqlite_utils.Database) -> None:
    # Settlement on what was known at the gate (store/readings.py, "When a
    # reading counts"): `counted_at` is the time a reading counts at in
    # metering, `held` says why it differs from the meter's `time`; and the
    # end of the last interval whose metering was published (closed).
    db.execute("ALTER TABLE readings ADD COLUMN counted_at REAL")
    db.execute("ALTER TABLE readings ADD COLUMN held TEXT")
    db.execute("UPDATE readings SET counted_at = time")
    db.execute("CREATE INDEX readings_device_counted ON readings (device_id, counted_at)")
    db.execute("CREATE TABLE metering_closed (id INTEGER PRIMARY KEY CHECK (id = 1), until REAL NOT NULL)")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3, _v4]


def open_database(path: str | Path) -> sqlite_utils.Database:
    """Open (creating and migrating if needed) the database at `path`."""
    p = Path(path)
    if str(p) != ":memory:":
        p.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(str(p), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise StoreError(f"cannot open database {p}: {e}; restore it from a backup or move it aside") from None
    if integrity != "ok":
        raise StoreError(f"database {p} failed its integrity check: {integrity}")
    db = sqlite_utils.Database(conn)
    _migrate(db)
    return db


def _migrate(db: sqlite_utils.Database) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        with db.conn:
            db.execute("BEGIN IMMEDIATE")
            migration(db)
            db.execute(f"PRAGMA user_version={number}")
