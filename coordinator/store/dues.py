"""What the settled intervals say each coordinator owes another for the
energy traded between them.

A buyer pays its sellers against these sums, and a seller judges its
buyers against them (trading/), so they must survive a restart: without
them a restarted buyer would forget what it had paid ahead and pay it
again, and a restarted seller would forget who is behind. What has been
paid is not kept here: the channel store already holds every signed
update (channels/store.py). An interval is recorded once; recording it
again changes nothing.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from .lean import sqlite_utils

from .database import StoreError


@dataclass(frozen=True)
class Due:
    payer: str  # public key hex
    payee: str
    wh: int
    sats: int


class DuesStore:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def record(self, interval_start: int, dues: Iterable[Due]) -> list[Due]:
        """Keep an interval's dues (summed per payer and payee); returns
        those not already recorded, in one transaction."""
        merged: dict[tuple[str, str], tuple[int, int]] = {}
        for d in dues:
            if d.wh < 0 or d.sats < 0:
                raise ValueError(f"due {d}: energy and amount must be >= 0")
            wh, sats = merged.get((d.payer, d.payee), (0, 0))
            merged[(d.payer, d.payee)] = (wh + d.wh, sats + d.sats)
        now = datetime.now(timezone.utc).isoformat()
        new = []
        try:
            with self.db.conn:
                self.db.execute("BEGIN IMMEDIATE")
                for (payer, payee), (wh, sats) in sorted(merged.items()):
                    cur = self.db.execute(
                        "INSERT OR IGNORE INTO p2p_dues (interval_start, payer, payee, wh, sats, recorded_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)", [interval_start, payer, payee, wh, sats, now])
                    if cur.rowcount:
                        new.append(Due(payer, payee, wh, sats))
        except sqlite3.Error as e:
            raise StoreError(f"recording the dues of interval {interval_start} failed: {e}") from None
        return new

    def _sums(self, by: str, where: str, who: str) -> dict[str, int]:
        rows = self.db.execute(f"SELECT {by}, SUM(sats) FROM p2p_dues WHERE {where} = ? GROUP BY {by}", [who])
        return {peer: int(total) for peer, total in rows.fetchall()}

    def owed_by(self, payer: str) -> dict[str, int]:
        """Per payee, everything `payer` has been settled to owe it."""
        return self._sums("payee", "payer", payer)

    def owed_to(self, payee: str) -> dict[str, int]:
        """Per payer, everything it has been settled to owe `payee`."""
        return self._sums("payer", "payee", payee)

    def intervals(self) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT interval_start FROM p2p_dues ORDER BY 1").fetchall()]

    def totals_since(self, who: str, since: int) -> tuple[int, int, int, int]:
        """(earned sat, sold Wh, spent sat, bought Wh) of `who` over the
        intervals starting at or after `since` (the web app's Money page)."""
        earned = self.db.execute("SELECT COALESCE(SUM(sats), 0), COALESCE(SUM(wh), 0) FROM p2p_dues "
                                 "WHERE payee = ? AND interval_start >= ?", [who, since]).fetchone()
        spent = self.db.execute("SELECT COALESCE(SUM(sats), 0), COALESCE(SUM(wh), 0) FROM p2p_dues "
                                "WHERE payer = ? AND interval_start >= ?", [who, since]).fetchone()
        return int(earned[0]), int(earned[1]), int(spent[0]), int(spent[1])

    def rows_since(self, who: str, since: int) -> list[tuple[int, str, str, int, int]]:
        """(interval start, payer, payee, Wh, sat) of every due of `who`
        from intervals starting at or after `since`, oldest first."""
        return [(int(r[0]), r[1], r[2], int(r[3]), int(r[4])) for r in self.db.execute(
            "SELECT interval_start, payer, payee, wh, sats FROM p2p_dues WHERE (payer = ? OR payee = ?) "
            "AND interval_start >= ? ORDER BY interval_start", [who, who, since]).fetchall()]
