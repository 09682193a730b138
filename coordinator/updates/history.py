"""The rollout's record in the coordinator's SQLite database: each meter's
last update report (and its last rollback, kept after a later success),
which meters were taken as canaries for a version, and which versions'
rollouts halted. A restart reads it back, so a coordinator neither offers a
halted version again nor forgets which meters run what.

Its tables are created here, if missing, rather than by a numbered
migration in store/database.py: they belong to [updates] alone and a
coordinator without it never has them.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import sqlite_utils

from ..store.database import StoreError

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS update_meters (device_id TEXT PRIMARY KEY, version TEXT NOT NULL, "
    "tried TEXT NOT NULL, ok INTEGER NOT NULL, why TEXT NOT NULL, at INTEGER NOT NULL, "
    "rollback_version TEXT, rollback_why TEXT, rollback_at INTEGER)",
    "CREATE TABLE IF NOT EXISTS update_canaries (version TEXT NOT NULL, device_id TEXT NOT NULL, "
    "PRIMARY KEY (version, device_id))",
    "CREATE TABLE IF NOT EXISTS update_halts (version TEXT PRIMARY KEY, why TEXT NOT NULL)",
)


class UpdateHistory:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        try:
            with db.conn:
                for stmt in SCHEMA:
                    db.execute(stmt)
        except sqlite3.Error as e:
            raise StoreError(f"update history tables: {e}") from None

    def _write(self, what: str, sql: str, args: list[Any]) -> None:
        try:
            with self.db.conn:
                self.db.execute(sql, args)
        except sqlite3.Error as e:
            raise StoreError(f"recording {what} failed: {e}") from None

    def meter(self, device: str, m: dict[str, Any]) -> None:
        back = m.get("last_rollback") or {}
        self._write(f"the update report of {device}",
                    "INSERT OR REPLACE INTO update_meters (device_id, version, tried, ok, why, at, rollback_version, "
                    "rollback_why, rollback_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [device, m["version"], m["tried"], int(m["ok"]), m["why"], m["at"], back.get("version"),
                     back.get("why"), back.get("at")])

    def canary(self, version: str, device: str) -> None:
        self._write(f"canary {device} for {version}",
                    "INSERT OR IGNORE INTO update_canaries (version, device_id) VALUES (?, ?)", [version, device])

    def halt(self, version: str, why: str) -> None:
        self._write(f"the halt of {version}", "INSERT OR IGNORE INTO update_halts (version, why) VALUES (?, ?)",
                    [version, why])

    def load(self) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]], dict[str, str]]:
        """(meters, canaries per version, halted versions) as Rollout keeps them."""
        meters: dict[str, dict[str, Any]] = {}
        for row in self.db.execute("SELECT device_id, version, tried, ok, why, at, rollback_version, rollback_why, "
                                   "rollback_at FROM update_meters").fetchall():
            m: dict[str, Any] = {"version": row[1], "tried": row[2], "ok": bool(row[3]), "why": row[4], "at": row[5]}
            if row[6] is not None:
                m["last_rollback"] = {"version": row[6], "why": row[7], "at": row[8]}
            meters[row[0]] = m
        canaries: dict[str, set[str]] = {}
        for version, device in self.db.execute("SELECT version, device_id FROM update_canaries").fetchall():
            canaries.setdefault(version, set()).add(device)
        halted = dict(self.db.execute("SELECT version, why FROM update_halts").fetchall())
        return meters, canaries, halted
