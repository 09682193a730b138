"""Every decision the planner made and why, for the history page.

Its own SQLite file (like the channel store), WAL with synchronous=FULL,
one row per decision, written before the decision is acted on:

    decided_at      the clock's time of the decision (Unix s)
    slot_start      the slot its setpoints are for; order_start: the interval its orders are for
    status          "optimal", or "fallback" with `reason` (infeasible inputs, solver failure)
    inputs_digest   SHA-256 of the inputs (model.PlanInputs.digest)
    objective_sat   the plan's cost over the horizon (None for a fallback)
    battery_w, ev_w the setpoints chosen for slot_start
    orders          JSON [{side, quantity_wh, limit_sat_per_kwh}]
    why             JSON: the slot's own inputs (load, PV, prices and where
                    they came from, the state of charge), the horizon
    schedule        zlib-compressed JSON of the whole plan per slot (~2 KB)

Rows older than `keep_days` are dropped by `prune`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    decided_at INTEGER NOT NULL,
    slot_start INTEGER NOT NULL,
    order_start INTEGER,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    inputs_digest TEXT NOT NULL,
    objective_sat REAL,
    battery_w REAL NOT NULL,
    ev_w REAL,
    orders TEXT NOT NULL,
    why TEXT NOT NULL,
    schedule BLOB
);
CREATE INDEX IF NOT EXISTS decisions_slot ON decisions (slot_start);
"""


class JournalError(RuntimeError):
    """The journal's database cannot be opened or written."""


@dataclass(frozen=True)
class Entry:
    decided_at: int
    slot_start: int
    order_start: int | None
    status: str
    reason: str
    inputs_digest: str
    objective_sat: float | None
    battery_w: float
    ev_w: float | None
    orders: list[dict[str, Any]]
    why: dict[str, Any]
    schedule: dict[str, Any] | None = None


class Journal:
    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if str(p) != ":memory:":
            p.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(p), isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=5000")
            self.conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise JournalError(f"cannot open the planner's journal {p}: {e}") from None
        self._lock = threading.Lock()

    def record(self, e: Entry) -> int:
        schedule = None if e.schedule is None else zlib.compress(
            json.dumps(e.schedule, separators=(",", ":")).encode(), 6)
        try:
            with self._lock, self.conn:
                cur = self.conn.execute(
                    "INSERT INTO decisions (decided_at, slot_start, order_start, status, reason, inputs_digest, "
                    "objective_sat, battery_w, ev_w, orders, why, schedule) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [e.decided_at, e.slot_start, e.order_start, e.status, e.reason, e.inputs_digest,
                     e.objective_sat, e.battery_w, e.ev_w, json.dumps(e.orders), json.dumps(e.why, default=str),
                     schedule])
        except sqlite3.Error as err:
            raise JournalError(f"recording the decision for slot {e.slot_start} failed: {err}") from None
        return int(cur.lastrowid or 0)

    def recent(self, n: int = 96, with_schedule: bool = False) -> list[Entry]:
        """The last `n` decisions, newest first."""
        rows = self.conn.execute(
            "SELECT decided_at, slot_start, order_start, status, reason, inputs_digest, objective_sat, battery_w, "
            "ev_w, orders, why, schedule FROM decisions ORDER BY id DESC LIMIT ?", [n]).fetchall()
        return [Entry(int(r[0]), int(r[1]), None if r[2] is None else int(r[2]), r[3], r[4], r[5], r[6], r[7], r[8],
                      json.loads(r[9]), json.loads(r[10]),
                      json.loads(zlib.decompress(r[11])) if with_schedule and r[11] is not None else None)
                for r in rows]

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])

    def prune(self, before: int) -> int:
        """Drop decisions made before `before`; returns how many."""
        with self._lock, self.conn:
            cur = self.conn.execute("DELETE FROM decisions WHERE decided_at < ?", [before])
        return cur.rowcount

    def close(self) -> None:
        self.conn.close()
