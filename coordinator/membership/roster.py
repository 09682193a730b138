"""Who is a member of the zone now, from the records seen so far. Pure:
records in, answers out, time passed in.

The rules, the same on every coordinator whatever order records arrive in:
- a record counts only if `records.verify` passes (k admin signatures,
  our zone);
- per member, the newest record decides (issued time; at the same second a
  revocation beats an admission; then the larger record digest, so that
  every coordinator keeps the same one). An older record arriving later
  (a replay) changes nothing: a revoked member cannot come back with its
  old admission, only with an admission issued after the revocation;
- a member is current while its deciding record is an admission that has
  begun (issued at most MAX_CLOCK_SKEW_S ahead) and not expired;
- one grid connection point, one member: if two current admissions name
  the same connection point, only the newer counts (a household that
  replaced its coordinator key needs no revocation for the old one);
- a record issued more than MAX_CLOCK_SKEW_S in the future is refused (it
  is offered again at the next refresh), so admins cannot by mistake sign
  a revocation that blocks every later admission.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from . import records
from .records import ADMIT, REVOKE, MembershipError, Record, Zone

MAX_CLOCK_SKEW_S = 300
# Verdicts on raw records kept to skip verifying the same bytes at every
# refresh; cleared when full.
MAX_JUDGED = 4096
# Members a roster tracks; records for more are refused (a zone is a street,
# not a city: overlay keys return at most 512 records).
MAX_MEMBERS = 512


@dataclass(frozen=True)
class Member:
    key: bytes  # compressed public key of the coordinator
    connection: str
    feeder: str
    issued: int
    expires: int
    signers: tuple[bytes, ...]

    @property
    def key_hex(self) -> str:
        return self.key.hex()


def _rank(r: Record) -> tuple[int, int, bytes]:
    return (*r.order(), r.digest)


class Roster:
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.latest: dict[bytes, Record] = {}  # member key -> deciding record
        self._judged: dict[bytes, str] = {}
        self._cache: tuple[int, int, dict[bytes, Member]] | None = None
        self._version = 0
        self.counts = {"new": 0, "stale": 0, "refused": 0}

    def offer(self, raw: bytes, now: float) -> str:
        """Judge one record: "new" (it decides for its member now), "stale"
        (older than what we hold, or already held). Raises MembershipError
        for a record that does not count at all."""
        raw = bytes(raw)
        digest = hashlib.sha256(raw).digest()
        seen = self._judged.get(digest)
        if seen is not None and seen.startswith("refused: "):
            self.counts["refused"] += 1
            raise MembershipError(seen[len("refused: "):])
        if seen is not None:
            self.counts["stale"] += 1
            return "stale"
        if len(self._judged) >= MAX_JUDGED:
            self._judged.clear()
        try:
            r = records.verify(raw, self.zone)
        except MembershipError as e:
            # Forged or malformed stays so: not verified again.
            self._judged[digest] = f"refused: {e}"
            self.counts["refused"] += 1
            raise
        try:
            if r.issued > now + MAX_CLOCK_SKEW_S:
                raise MembershipError(f"issued at {r.issued}, more than {MAX_CLOCK_SKEW_S} s after now {now:.0f}")
            if r.member not in self.latest and len(self.latest) >= MAX_MEMBERS:
                raise MembershipError(f"the roster already tracks {MAX_MEMBERS} keys")
        except MembershipError:
            self.counts["refused"] += 1
            raise
        self._judged[digest] = r.type
        old = self.latest.get(r.member)
        if now >= r.issued + records.MAX_ADMISSION_S or (old is not None and _rank(r) <= _rank(old)):
            self.counts["stale"] += 1
            return "stale"
        self.latest[r.member] = r
        self._version += 1
        self.counts["new"] += 1
        return "new"

    def members(self, now: float) -> dict[bytes, Member]:
        """Every current member at `now`, by key."""
        t = int(now)
        if self._cache is not None and self._cache[:2] == (t, self._version):
            return self._cache[2]
        by_point: dict[str, Record] = {}
        for r in self.latest.values():
            if r.type != ADMIT or not r.issued <= t + MAX_CLOCK_SKEW_S or t >= r.expires:
                continue
            other = by_point.get(r.connection)
            if other is None or _rank(r) > _rank(other):
                by_point[r.connection] = r
        out = {r.member: Member(r.member, r.connection, r.feeder, r.issued, r.expires, r.signers)
               for r in by_point.values()}
        self._cache = (t, self._version, out)
        return out

    def is_member(self, key: bytes, now: float) -> bool:
        return bytes(key) in self.members(now)

    def status(self, key: bytes, now: float) -> str:
        """For people: "member", "expired", "revoked", "replaced" or "unknown"."""
        r = self.latest.get(bytes(key))
        if r is None:
            return "unknown"
        if r.type == REVOKE:
            return "revoked"
        if self.is_member(key, now):
            return "member"
        if now >= r.expires:
            return "expired"
        if r.issued > now + MAX_CLOCK_SKEW_S:
            return "not yet"
        return "replaced"

    def revocations(self, now: float) -> list[Record]:
        """Revocations still needed (issued within MAX_ADMISSION_S), newest
        first: what a coordinator keeps republishing."""
        live = [r for r in self.latest.values() if r.type == REVOKE and now < r.issued + records.MAX_ADMISSION_S]
        return sorted(live, key=_rank, reverse=True)

    def prune(self, now: float) -> int:
        """Forget deciding records every older record of whose member has
        expired by now (issued more than MAX_ADMISSION_S ago). Returns how
        many were dropped."""
        old = [m for m, r in self.latest.items() if now >= r.issued + records.MAX_ADMISSION_S]
        for m in old:
            del self.latest[m]
        if old:
            self._version += 1
        return len(old)

    def raws(self) -> list[bytes]:
        """The deciding records, to keep across a restart."""
        return [r.raw for _m, r in sorted(self.latest.items())]
