"""Membership records in and out: the overlay's membership board, the
records folder an installer fills, and a cache kept across restarts.

Board: every record goes under `mg/members/<zone id>` (gate.board_key),
in the publisher's slot "<type>:<member key id>", so a newer admission or
revocation of the same member from the same publisher replaces the older
one for readers. Anyone may publish there; what counts is decided by the
roster from the admins' signatures, never by the publisher.

Who keeps records alive (an overlay record lives at most 24 h): each
coordinator re-publishes the admin rotations (the newest
MAX_REPUBLISHED_ROTATIONS), its own current admission and the revocations
it knows (newest first; MAX_REPUBLISHED_REVOCATIONS records in all, so a
publisher stays under the overlay's 64 slots per key), every `republish_s`. A revoked
member cannot make its revocation lapse: every other member keeps it.

Startup: the records folder (`[zone] records_dir`: files an installer
copied, e.g. this coordinator's own admission) and the cache of records
learnt before (`[zone] cache_path`) are offered to the roster before the
overlay is read, so the first market round already knows the members.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Callable

from microgrid.shared import cbor

from ..clock import Clock, sleep_until, wait_or_stop
from . import records
from .gate import board_key
from .records import MembershipError
from .roster import Roster

log = logging.getLogger("microgrid.membership")

RECORD_TTL_S = 6 * 3600
# Records one coordinator keeps on the board: admin rotations (newest),
# its own admission, then revocations (newest first), within the overlay's
# 64 slots per publisher and key.
MAX_REPUBLISHED_ROTATIONS = 16
MAX_REPUBLISHED_REVOCATIONS = 60
MAX_FOLDER_FILES = 1024


def slot_for(r: records.Record) -> str:
    return f"{r.type}:{r.member_id}"


async def publish(overlay: Any, zone: records.Zone, raw: bytes, ttl_s: int = RECORD_TTL_S,
                  roster: Roster | None = None) -> bool:
    """Publish one record on the zone's board. Refuses (MembershipError)
    a record the readers would refuse (judged by `roster`'s admin chain when
    given, else by the founding admins). True when the overlay confirmed it."""
    r = roster.check(raw) if roster is not None else records.verify(raw, zone)
    return bool(await overlay.put(board_key(zone.id_hex), bytes(raw), ttl_s, slot=slot_for(r)))


def offer_all(roster: Roster, raws: list[bytes], now: float, where: str) -> dict[str, int]:
    """Offer records to the roster; refusals are counted and logged (without
    the bytes: a record is not a secret, but a flood is not worth a log)."""
    counts = {"new": 0, "stale": 0, "refused": 0}
    todo = list(raws)
    while todo:
        epochs = len(roster.chain)
        refused = []
        for raw in todo:
            try:
                counts[roster.offer(raw, now)] += 1
            except MembershipError as e:
                refused.append(raw)
                log.debug("membership record from %s refused: %s", where, e)
        # An admin rotation taken in this pass may make records refused
        # before it (signed by the new admins, or the next rotation) good.
        todo = refused if len(roster.chain) != epochs else []
        if not todo:
            counts["refused"] += len(refused)
    if counts["refused"]:
        log.info("%d membership record(s) from %s refused", counts["refused"], where)
    return counts


async def fetch(overlay: Any, roster: Roster, now: float) -> dict[str, int]:
    """Read the zone's board once into the roster."""
    recs = await overlay.get(board_key(roster.zone.id_hex))
    return offer_all(roster, [r.body for r in recs], now, "the overlay")


def read_folder(folder: Path) -> list[bytes]:
    """Every regular file of `folder` (not hidden), as bytes; missing: none."""
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir())[:MAX_FOLDER_FILES]:
        if p.name.startswith(".") or not p.is_file() or p.stat().st_size > records.MAX_RECORD_BYTES:
            continue
        out.append(p.read_bytes())
    return out


def load_cache(path: Path) -> list[bytes]:
    """The records kept at the last run; a missing or damaged cache is
    empty (the overlay and the records folder fill the roster again)."""
    try:
        items = cbor.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, cbor.CBORError) as e:
        log.warning("membership cache %s unreadable (%s): starting from the records folder and the overlay", path, e)
        return []
    return [x for x in items if isinstance(x, bytes)] if isinstance(items, list) else []


def save_cache(path: Path, raws: list[bytes]) -> None:
    """Atomically: a crash leaves the old cache or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(cbor.dumps(list(raws)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        log.warning("membership cache %s not saved: %s", path, e)


class MembershipSync:
    """Keeps one coordinator's roster current and its records alive."""

    def __init__(self, overlay: Any, roster: Roster, clock: Clock, own_key: bytes,
                 records_dir: Path | None = None, cache_path: Path | None = None,
                 refresh_s: float = 300.0, republish_s: float = RECORD_TTL_S / 4,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        if republish_s >= RECORD_TTL_S:
            raise ValueError(f"republish_s={republish_s} must be shorter than the records' {RECORD_TTL_S} s life")
        self.overlay = overlay
        self.roster = roster
        self.clock = clock
        self.own_key = bytes(own_key)
        self.records_dir = records_dir
        self.cache_path = cache_path
        self.refresh_s = refresh_s
        self.republish_s = republish_s
        self._sleep = sleep
        self._listen: Any = None
        self._saved: list[bytes] = []
        self.published = 0

    def load_local(self) -> dict[str, int]:
        """Records folder and cache into the roster (before the overlay)."""
        now = self.clock.now()
        counts = {"new": 0, "stale": 0, "refused": 0}
        for where, raws in (("the cache", load_cache(self.cache_path) if self.cache_path else []),
                            ("the records folder", read_folder(self.records_dir) if self.records_dir else [])):
            for k, v in offer_all(self.roster, raws, now, where).items():
                counts[k] += v
        self._saved = self.roster.raws()
        self.expect_members()
        status = self.roster.status(self.own_key, now)
        if self.own_key and status != "member":
            log.warning("this coordinator is not a current member of zone %s (%s): the others will ignore its "
                        "orders, records and channels until admins admit it (microgrid zone admit)",
                        self.roster.zone.name, status)
        return counts

    def _on_record(self, rec: Any) -> None:
        if offer_all(self.roster, [rec.body], self.clock.now(), "the overlay")["new"]:
            self.save()

    def start(self) -> None:
        """Listen to the board: new records take effect as they arrive."""
        if self._listen is None:
            self._listen = self.overlay.listen(board_key(self.roster.zone.id_hex), self._on_record)

    def stop(self) -> None:
        if self._listen is not None:
            self._listen.cancel()
            self._listen = None

    def expect_members(self) -> None:
        """Tell the overlay whom to ask for by name when a read is flooded
        (overlay/interface.py `expect_only`): the zone's current members."""
        expect_only = getattr(self.overlay, "expect_only", None)
        if expect_only is not None:
            expect_only(self.roster.members(self.clock.now()))

    def save(self) -> None:
        raws = self.roster.raws()
        if self.cache_path is not None and raws != self._saved:
            save_cache(self.cache_path, raws)
            self._saved = raws

    async def refresh(self) -> dict[str, int]:
        """The records folder (files an installer added while we ran, or
        records refused earlier as not yet valid) and the overlay's board."""
        now = self.clock.now()
        if self.records_dir is not None:
            offer_all(self.roster, read_folder(self.records_dir), now, "the records folder")
        counts = await fetch(self.overlay, self.roster, now)
        self.roster.prune(now)
        self.save()
        self.expect_members()
        return counts

    async def republish(self) -> int:
        """Our own current admission and the revocations we know; returns
        how many records were confirmed."""
        now = self.clock.now()
        zone = self.roster.zone
        mine = self.roster.latest.get(self.own_key)
        out = self.roster.rotations[-MAX_REPUBLISHED_ROTATIONS:]
        out += [mine] if mine is not None and mine.type == records.ADMIT and now < mine.expires else []
        out += self.roster.revocations(now)[:MAX_REPUBLISHED_REVOCATIONS - len(out)]
        ok = 0
        for r in out:
            try:
                ok += await publish(self.overlay, zone, r.raw, roster=self.roster)
            except Exception as e:  # noqa: BLE001 - retried at the next round
                log.warning("republishing the %s record of %s failed: %s", r.type, r.member_id, e)
        self.published += ok
        return ok

    async def run(self, stop: asyncio.Event) -> None:
        """After a first `republish` and `refresh` (the caller's, at start):
        refresh every `refresh_s`, republish every `republish_s` (clock
        seconds), until `stop`."""
        next_republish = self.clock.now() + self.republish_s
        while not stop.is_set():
            if await wait_or_stop(sleep_until(self.clock, self.clock.now() + self.refresh_s, self._sleep), stop):
                break
            try:
                if self.clock.now() >= next_republish:
                    await self.republish()
                    next_republish = self.clock.now() + self.republish_s
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failed overlay call is retried next round
                log.exception("membership refresh failed")
