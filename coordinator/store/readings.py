"""Registered devices and their accepted readings.

Every accepted reading is kept exactly as received (the COSE bytes, in the
`cose` column) beside its decoded values, so anyone can re-verify the
stored evidence later with any COSE library and the device's public key.
(device_id, seq) is unique: a reading is stored once, however often the
meter retransmits it.

When a reading counts. Metering (trading/metering.py) takes a meter's
energy between its readings at the ends of each interval, by the time
in `counted_at`. That is the reading's own time, except when the reading
is dated at or before
  - the device's last stored reading (a meter clock that stepped back, a
    back-dated or replayed-looking reading), or
  - the end of the last interval whose metering was already published
    (`close_metering`): that interval is settled on what was known then.
Such a reading is stored all the same (the signed message is evidence),
with `held` saying why, and counts just after the later of the two
(+1 ms): its counter increase lands, once, in the first interval still
open. Counters are cumulative, so no energy is lost or counted twice;
the settled interval never changes. Per device, `counted_at` therefore
strictly increases with the sequence number.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

from .lean import sqlite_utils

from microgrid.shared import reading as reading_format

from .database import StoreError


@dataclass(frozen=True)
class Device:
    device_id: str
    public_key: bytes
    name: str
    registered_at: str


class DuplicateReading(Exception):
    """(device, seq) is already stored; `identical` tells whether the
    stored message is byte-for-byte the one offered."""

    def __init__(self, device_id: str, seq: int, identical: bool) -> None:
        super().__init__(f"device {device_id} seq {seq} already stored")
        self.identical = identical


_INSERT = (
    "INSERT INTO readings (device_id, seq, time, import_wh, export_wh, power_w, voltage_v,"
    " extra, source, received_at, cose, counted_at, held) VALUES (:device_id, :seq, :time, :import_wh, :export_wh,"
    " :power_w, :voltage_v, :extra, :source, :received_at, :cose, :counted_at, :held)"
)

HELD_STEP_S = 0.001  # a held reading counts this long after what it may not precede
HELD_BACK = "dated at or before the device's last reading"
HELD_CLOSED = "dated into an interval already settled"
FLAG_TIME_STEPPED = 8  # shared/READING_FORMAT.md, optional record `flags`, bit 3


def count_time(t: float, last: float | None, closed_until: float | None) -> tuple[float, str | None]:
    """(counted_at, held reason or None) for a reading dated `t`, after a
    last reading counted at `last` and with metering closed up to
    `closed_until` (see the module docstring)."""
    floor = max(x for x in (last, closed_until, float("-inf")) if x is not None)
    if t > floor:
        return t, None
    reason = HELD_BACK if last is not None and t <= last else HELD_CLOSED
    return floor + HELD_STEP_S, reason


def counter_increase(prev: dict[str, Any], cur: dict[str, Any]) -> tuple[int, int]:
    """Energy (import Wh, export Wh) between two consecutive readings of a
    meter. A reading carrying a `reset` record starts new counters; the
    totals just before the reset travel with it (`reset_import_wh`,
    `reset_export_wh`), so the energy across it is still exact:
    (reset total - previous) + new counter. Anything else that runs
    backwards counts as zero and is logged, never as negative energy."""
    extra = cur.get("extra")
    if isinstance(extra, str):
        extra = json.loads(extra)
    if extra and "reset" in extra:
        before_imp = int(extra.get("reset_import_wh", prev["import_wh"]))
        before_exp = int(extra.get("reset_export_wh", prev["export_wh"]))
        return (max(before_imp - prev["import_wh"], 0) + cur["import_wh"],
                max(before_exp - prev["export_wh"], 0) + cur["export_wh"])
    d_imp = cur["import_wh"] - prev["import_wh"]
    d_exp = cur["export_wh"] - prev["export_wh"]
    if d_imp < 0 or d_exp < 0:
        logging.getLogger("microgrid.store").warning(
            "counters of %s ran backwards at seq %s without a reset record", cur.get("device_id", "?"), cur.get("seq"))
    return max(d_imp, 0), max(d_exp, 0)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ReadingStore:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self._last_seq: dict[str, int] = {}
        self._last_counted: dict[str, float] = {}
        self._closed_until: float | None = None

    # -- devices -----------------------------------------------------------

    def register_device(self, public_key: bytes, name: str = "") -> tuple[Device, bool]:
        """Register a public key; returns (device, created). Registering the
        same key again is harmless and keeps the first registration."""
        device_id = reading_format.device_id(public_key)
        existing = self.device(device_id)
        if existing is not None:
            if existing.public_key != public_key:
                raise StoreError(f"key id {device_id} collides with a different registered key")
            return existing, False
        record = {
            "device_id": device_id,
            "public_key": public_key.hex(),
            "name": name or device_id,
            "registered_at": utc_now(),
        }
        with self.db.conn:
            self.db.table("devices").insert(record)
        return self.device(device_id), True  # type: ignore[return-value]

    def device(self, device_id: str) -> Device | None:
        row = self.db.execute(
            "SELECT device_id, public_key, name, registered_at FROM devices WHERE device_id = ?", [device_id]
        ).fetchone()
        if row is None:
            return None
        return Device(row[0], bytes.fromhex(row[1]), row[2], row[3])

    def devices(self) -> list[Device]:
        rows = self.db.execute("SELECT device_id, public_key, name, registered_at FROM devices ORDER BY device_id")
        return [Device(r[0], bytes.fromhex(r[1]), r[2], r[3]) for r in rows]

    # -- readings ----------------------------------------------------------

    def last_seq(self, device_id: str) -> int | None:
        if device_id in self._last_seq:
            return self._last_seq[device_id]
        row = self.db.execute("SELECT MAX(seq) FROM readings WHERE device_id = ?", [device_id]).fetchone()
        if row[0] is not None:
            self._last_seq[device_id] = row[0]
        return row[0]

    def stored_message(self, device_id: str, seq: int) -> bytes | None:
        row = self.db.execute("SELECT cose FROM readings WHERE device_id = ? AND seq = ?", [device_id, seq]).fetchone()
        return None if row is None else row[0]

    def last_counted_at(self, device_id: str) -> float | None:
        """When the device's last stored reading counts (see "When a
        reading counts"); None before its first reading."""
        if device_id in self._last_counted:
            return self._last_counted[device_id]
        row = self.db.execute("SELECT counted_at FROM readings WHERE device_id = ? ORDER BY seq DESC LIMIT 1",
                              [device_id]).fetchone()
        if row is None:
            return None
        self._last_counted[device_id] = float(row[0])
        return float(row[0])

    def closed_until(self) -> float | None:
        """The end of the last interval whose metering was published: no
        reading counts at or before it any more."""
        if self._closed_until is None:
            row = self.db.execute("SELECT until FROM metering_closed WHERE id = 1").fetchone()
            self._closed_until = None if row is None else float(row[0])
        return self._closed_until

    def close_metering(self, until: float) -> None:
        """Metering up to `until` is published (settled on): from now on a
        reading dated at or before it counts after it. Never moves back."""
        current = self.closed_until()
        if current is not None and until <= current:
            return
        with self.db.conn:
            self.db.conn.execute("INSERT OR REPLACE INTO metering_closed (id, until) VALUES (1, ?)", [float(until)])
        self._closed_until = float(until)

    def time_anomalies(self, device_id: str) -> dict[str, int]:
        """A device's clock health, from its stored readings: how many were
        held because dated at or before its last one (`stepped_back`) or
        into a settled interval (`into_settled`), and how many the meter
        itself flagged as time stepped (`flagged_stepped`, flags bit 3)."""
        row = self.db.execute(
            "SELECT SUM(held = ?), SUM(held = ?), SUM(COALESCE(json_extract(extra, '$.flags'), 0) & ? != 0)"
            " FROM readings WHERE device_id = ?",
            [HELD_BACK, HELD_CLOSED, FLAG_TIME_STEPPED, device_id]).fetchone()
        return {"stepped_back": int(row[0] or 0), "into_settled": int(row[1] or 0),
                "flagged_stepped": int(row[2] or 0)}

    def _insert_row(self, record: dict[str, Any]) -> sqlite3.Cursor:
        """One row into readings, committed (synchronous=FULL) on return."""
        with self.db.conn:
            return self.db.conn.execute(_INSERT, record)

    def insert(self, r: reading_format.Reading, message: bytes, source: str = "coap") -> int:
        """Store one verified reading (see insert_batch); 1 if it was held."""
        return self.insert_batch([r], message, source)

    def insert_batch(self, batch: list[reading_format.Reading], message: bytes, source: str = "coap") -> int:
        """Store the verified readings of one message in one transaction,
        committed before returning, so the caller may acknowledge them. Each
        row keeps the whole message as evidence. Returns how many of them
        were held (counted later than dated: see "When a reading counts").
        Raises DuplicateReading for
        a (device, seq) already stored (nothing of the batch is stored),
        StoreError if the disk refuses the write."""
        now = utc_now()
        closed = self.closed_until()
        records = []
        last: dict[str, float | None] = {}
        for r in batch:
            if r.device not in last:
                last[r.device] = self.last_counted_at(r.device)
            counted_at, held = count_time(float(r.t), last[r.device], closed)
            last[r.device] = counted_at
            records.append({
                "device_id": r.device,
                "seq": r.seq,
                "time": float(r.t),
                "import_wh": r.import_wh,
                "export_wh": r.export_wh,
                "power_w": float(r.power_w),
                "voltage_v": float(r.voltage_v),
                "extra": json.dumps(r.extra, sort_keys=True) if r.extra else None,
                "source": source,
                "received_at": now,
                "cose": bytes(message),
                "counted_at": counted_at,
                "held": held,
            })
        try:
            with self.db.conn:
                self.db.conn.execute("BEGIN IMMEDIATE")
                for record in records:
                    self.db.conn.execute(_INSERT, record)
        except sqlite3.IntegrityError:
            first = batch[0]
            stored = self.stored_message(first.device, first.seq)
            raise DuplicateReading(first.device, first.seq, stored == bytes(message)) from None
        except sqlite3.OperationalError as e:
            raise StoreError(f"cannot store reading {batch[0].device}/{batch[0].seq}: {e}") from None
        for r, record in zip(batch, records):
            last_seq = self._last_seq.get(r.device)
            if last_seq is None or r.seq > last_seq:
                self._last_seq[r.device] = r.seq
                self._last_counted[r.device] = record["counted_at"]
        return sum(1 for record in records if record["held"])

    def last_reading(self, device_id: str) -> dict[str, Any] | None:
        rows = self.recent_readings(device_id, 1)
        return rows[0] if rows else None

    def recent_readings(self, device_id: str, n: int) -> list[dict[str, Any]]:
        """The last n readings of a device, newest first."""
        cur = self.db.execute(
            "SELECT seq, time, import_wh, export_wh, power_w, voltage_v, extra, source, counted_at, held FROM readings"
            " WHERE device_id = ? ORDER BY seq DESC LIMIT ?",
            [device_id, n],
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur]

    def counters_at(self, device_id: str, t: float) -> tuple[int, int] | None:
        """(import_wh, export_wh) of the device's last reading counted at or
        before time t, or None if it has none yet."""
        row = self.db.execute(
            "SELECT import_wh, export_wh FROM readings WHERE device_id = ? AND counted_at <= ?"
            " ORDER BY counted_at DESC, seq DESC LIMIT 1",
            [device_id, t],
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def insert_measurement(self, device_id: str, name: str, t: float, import_wh: int, export_wh: int,
                           power_w: float | None, voltage_v: float | None, extra: dict[str, Any], source: str) -> int:
        """Store a wired meter's values (Modbus) beside the signed readings:
        same table, its own device id, `source` naming the bus device, and
        no COSE evidence (the meter cannot sign)."""
        if self.device(device_id) is None:
            with self.db.conn:
                self.db.table("devices").insert({"device_id": device_id, "public_key": "", "name": name,
                                                 "registered_at": utc_now()}, ignore=True)
        seq = (self.last_seq(device_id) or 0) + 1
        # The coordinator's own clock can step back too (NTP): same rule.
        counted_at, held = count_time(float(t), self.last_counted_at(device_id), self.closed_until())
        record = {"device_id": device_id, "seq": seq, "time": float(t), "import_wh": int(import_wh),
                  "export_wh": int(export_wh), "power_w": float(power_w or 0.0), "voltage_v": float(voltage_v or 0.0),
                  "extra": json.dumps(extra, sort_keys=True) if extra else None, "source": source,
                  "received_at": utc_now(), "cose": None, "counted_at": counted_at, "held": held}
        try:
            cur = self._insert_row(record)
        except sqlite3.OperationalError as e:
            raise StoreError(f"cannot store measurement {device_id}/{seq}: {e}") from None
        self._last_seq[device_id] = seq
        self._last_counted[device_id] = counted_at
        return int(cur.lastrowid or 0)

    def readings_between(self, device_id: str, start: float, end: float) -> list[dict[str, Any]]:
        """The last reading counted at or before `start` (if any) and every
        reading after it counted up to `end`, in sequence order: what
        counter_increase walks. By `counted_at`, not the meter's `time`
        (see "When a reading counts")."""
        first = self.db.execute(
            "SELECT seq FROM readings WHERE device_id = ? AND counted_at <= ? ORDER BY counted_at DESC, seq DESC"
            " LIMIT 1",
            [device_id, start],
        ).fetchone()
        cur = self.db.execute(
            "SELECT device_id, seq, time, counted_at, held, import_wh, export_wh, extra FROM readings"
            " WHERE device_id = ? AND seq >= ? AND counted_at <= ? ORDER BY seq",
            [device_id, first[0] if first else 0, end],
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur]

    def count(self, device_id: str | None = None) -> int:
        if device_id is None:
            return int(self.db.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
        return int(self.db.execute("SELECT COUNT(*) FROM readings WHERE device_id = ?", [device_id]).fetchone()[0])

    def readings(self, device_id: str | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        sql = "SELECT * FROM readings"
        args: list[Any] = []
        if device_id is not None:
            sql += " WHERE device_id = ?"
            args.append(device_id)
        sql += " ORDER BY device_id, seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        cur = self.db.execute(sql, args)
        cols = [c[0] for c in cur.description]
        for row in cur:
            yield dict(zip(cols, row))
