"""Accepting a reading: parse, authenticate, check its sequence, store.

Transport-free: `ReadingIngest.accept` takes the bytes of a request and
returns an `Outcome` (a CoAP response code and a short diagnostic); the
CoAP resource in resources.py only moves bytes. A reading is stored, and
committed, before the outcome says so; nothing is stored for any error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from bitcoinx import PublicKey

from microgrid.shared import reading as reading_format
from microgrid.shared import secp256k1

from ..store.database import StoreError
from ..store.readings import FLAG_TIME_STEPPED, DuplicateReading, ReadingStore
from . import ranges

log = logging.getLogger("microgrid.ingest")


@dataclass(frozen=True)
class Outcome:
    code: str  # "2.01", "4.00", ...
    diagnostic: str
    stored: bool = False
    device_id: str | None = None
    seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.code.startswith("2.")


def created(device_id: str, first: int, last: int, now: float) -> Outcome:
    # The time rides along: a meter without SNTP sets its clock from it.
    seqs = str(last) if first == last else f"{first}..{last}"
    return Outcome("2.01", f"stored {device_id}/{seqs} t={int(now)}", True, device_id, last)


def _flags(r: reading_format.Reading) -> int:
    """The reading's `flags` record, 0 when absent or not an integer."""
    v = (r.extra or {}).get("flags", 0)
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


class ReadingIngest:
    def __init__(
        self,
        store: ReadingStore,
        max_future_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        on_stored: Callable[[reading_format.Reading], None] | None = None,
    ) -> None:
        self.store = store
        self.max_future_s = max_future_s
        self.clock = clock
        self.on_stored = on_stored
        self._keys: dict[str, PublicKey] = {}
        self.counts = {"stored": 0, "duplicate": 0, "rejected": 0, "held": 0}
        # Devices whose clock was seen stepping: logged once each (the
        # store keeps every case: ReadingStore.time_anomalies).
        self.clock_flagged: set[str] = set()

    def _key(self, device_id: str) -> PublicKey | None:
        key = self._keys.get(device_id)
        if key is None:
            device = self.store.device(device_id)
            if device is None:
                return None
            key = PublicKey.from_bytes(device.public_key)
            self._keys[device_id] = key
        return key

    def forget_key(self, device_id: str) -> None:
        self._keys.pop(device_id, None)

    def _reject(self, code: str, why: str, device_id: str | None = None, seq: int | None = None) -> Outcome:
        self.counts["rejected"] += 1
        log.warning("reading rejected %s: %s", code, why)
        return Outcome(code, why, False, device_id, seq)

    def _stale(self, why: str, device_id: str, seq: int) -> Outcome:
        """4.09 for a validly signed reading numbered at or below what is
        stored. The diagnostic ends with where the coordinator stands, as
        `last=SEQ import=WH export=WH`, so a meter that lost its state
        (sequence back at 1) renumbers its readings above `last` and marks a
        counter drop (edge/resync.py). Only a reading signed by the device's
        key gets this far (applications with credentials read the same
        figures at GET /api/meters/latest): nothing secret is told."""
        row = self.store.last_reading(device_id)
        if row is not None:
            why += f"; last={row['seq']} import={row['import_wh']} export={row['export_wh']}"
        return self._reject("4.09", why, device_id, seq)

    def _watch_clock(self, batch: list[reading_format.Reading], held: int) -> None:
        """Flag a device whose clock steps: the meter says so (flags bit
        3), or its reading is dated at or before one stored before (held:
        it counts later, never in a settled interval). Stored and
        acknowledged all the same: the signed reading is evidence, and a
        meter refused would retry it forever."""
        device = batch[0].device
        stepped = any(_flags(x) & FLAG_TIME_STEPPED for x in batch)
        if (held or stepped) and device not in self.clock_flagged:
            self.clock_flagged.add(device)
            log.warning("meter %s: clock stepped (%s); readings dated back count from the last one on, settled "
                        "intervals stay as settled", device, "held %d of %d" % (held, len(batch)) if held
                        else "flagged by the meter")

    def accept(self, message: bytes) -> Outcome:
        try:
            batch = reading_format.parse_all(message)
        except reading_format.ReadingError as e:
            code = "4.13" if len(message) > reading_format.MAX_MESSAGE_BYTES else "4.00"
            return self._reject(code, f"malformed reading: {e}")
        r = batch[0]  # one signature covers the batch; its first reading decides duplicates
        for x in batch:
            # Before anything else: a value the store or a JSON reader cannot
            # hold is the sender's error (4.00), never ours (5.00).
            why = ranges.problem(x)
            if why is not None:
                return self._reject("4.00", f"out of range: {why} (shared/READING_FORMAT.md, Ranges)", x.device, x.seq)
        key = self._key(r.device)
        if key is None:
            return self._reject("4.01", f"unknown device {r.device}: register its public key first", r.device, r.seq)
        sig = r.message.signature
        if int.from_bytes(sig[32:], "big") > secp256k1.HALF_N:
            return self._reject("4.03", "signature has high S (malleated); ES256K here requires low S", r.device, r.seq)
        try:
            der = secp256k1.der_signature(sig)
            good = key.verify_der_signature(der, r.message.to_be_signed())
        except (ValueError, TypeError):
            good = False
        if not good:
            return self._reject("4.03", f"signature does not verify with the key registered for {r.device}", r.device, r.seq)
        latest = max(x.t for x in batch)
        if latest > self.clock() + self.max_future_s:
            return self._reject("4.00", f"reading time {latest} is more than {self.max_future_s:.0f} s in the future", r.device, r.seq)
        last = self.store.last_seq(r.device)
        if last is not None and r.seq <= last:
            stored = self.store.stored_message(r.device, r.seq)
            if stored == bytes(message):
                self.counts["duplicate"] += 1
                log.info("duplicate of stored reading %s/%d", r.device, r.seq)
                return Outcome("4.09", f"duplicate: seq {r.seq} already stored", False, r.device, r.seq)
            return self._stale(f"stale: seq {r.seq} is not above last stored {last}", r.device, r.seq)
        try:
            held = self.store.insert_batch(batch, message)
        except DuplicateReading as e:
            self.counts["duplicate"] += 1
            if e.identical:
                return Outcome("4.09", f"duplicate: seq {r.seq} already stored", False, r.device, r.seq)
            return self._stale(f"stale: seq {r.seq} already stored with other content", r.device, r.seq)
        except StoreError as e:
            # Not the meter's fault: it keeps the reading and retries.
            log.error("%s", e)
            return Outcome("5.03", "storage unavailable, retry later", False, r.device, r.seq)
        self.counts["stored"] += len(batch)
        self.counts["held"] += held
        self._watch_clock(batch, held)
        if self.on_stored is not None:
            for x in batch:
                self.on_stored(x)
        return created(r.device, r.seq, batch[-1].seq, self.clock())
