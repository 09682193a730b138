"""Retention: how long readings are kept at which resolution.

An SD card in a meter cabinet cannot hold every one-minute reading for
years, but the evidence must stay provable. Counters are cumulative, so a
kept reading proves all energy up to it; thinning keeps whole, signed
readings (with their COSE bytes) and drops the ones in between:

    newer than raw_days              every reading
    raw_days .. hourly_days          the last reading of each device per hour
    older than hourly_days           the last reading of each device per day

With the defaults (7 and 90 days), a year of one-minute readings from 50
meters is about 620,000 rows, under 256 MB on disk (tests/coordinator/
test_retention.py generates such a year for 10 meters and holds it to a
fifth of that; meters are thinned independently). Freed pages are reused, so the
file stops growing once the tiers are full.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .lean import sqlite_utils

log = logging.getLogger("microgrid.store.retention")

DAY = 86400


@dataclass(frozen=True)
class RetentionPolicy:
    raw_days: int = 7
    hourly_days: int = 90

    def __post_init__(self) -> None:
        if not 1 <= self.raw_days <= self.hourly_days:
            raise ValueError(f"retention raw_days={self.raw_days}, hourly_days={self.hourly_days}: expected "
                             "1 <= raw_days <= hourly_days")


def _thin(db: sqlite_utils.Database, lo: float | None, hi: float, bucket_s: int) -> int:
    where = "time < :hi" + ("" if lo is None else " AND time >= :lo")
    cur = db.conn.execute(
        f"DELETE FROM readings WHERE {where} AND id NOT IN ("
        f" SELECT MAX(id) FROM readings WHERE {where} GROUP BY device_id, CAST(time / :bucket AS INTEGER))",
        {"lo": lo, "hi": hi, "bucket": bucket_s},
    )
    return int(cur.rowcount or 0)


def apply_retention(db: sqlite_utils.Database, now: float, policy: RetentionPolicy = RetentionPolicy()) -> int:
    """Thin old readings as the policy says; returns the rows removed.

    Only what aged into a tier since the last run is looked at (the cut
    points are remembered), so a daily run costs one day's readings, not
    the whole table. Buckets are aligned to the hour and day, so a bucket
    split across two runs still ends with one reading."""
    raw_cut = (now - policy.raw_days * DAY) // 3600 * 3600
    hourly_cut = (now - policy.hourly_days * DAY) // DAY * DAY
    db.conn.execute("CREATE TABLE IF NOT EXISTS retention_state (tier TEXT PRIMARY KEY, cut REAL NOT NULL)")
    last = dict(db.conn.execute("SELECT tier, cut FROM retention_state").fetchall())
    removed = 0
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        lo_raw = last.get("hourly")
        if lo_raw is None or raw_cut > lo_raw:
            # Start a bucket early so it is thinned whole.
            removed += _thin(db, None if lo_raw is None else lo_raw - 3600, raw_cut, 3600)
        lo_daily = last.get("daily")
        if lo_daily is None or hourly_cut > lo_daily:
            removed += _thin(db, None if lo_daily is None else lo_daily - DAY, hourly_cut, DAY)
        db.conn.execute("INSERT OR REPLACE INTO retention_state VALUES ('hourly', ?), ('daily', ?)",
                        (max(raw_cut, lo_raw or 0), max(hourly_cut, lo_daily or 0)))
    if removed:
        log.info("retention removed %d readings older than %d days", removed, policy.raw_days)
    return removed
