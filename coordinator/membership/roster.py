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
  a revocation that blocks every later admission;
- admin keys rotate by a "rotate" record signed by k of the set in force:
  a record counts if k admins of the set in force at its issue time signed
  it (admissions signed before a rotation stay good; an old admin's
  signature on a record issued after it does not count).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from . import records
from .records import ADMIT, REVOKE, ROTATE, AdminSet, MembershipError, Record, Zone

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
        # Admin sets, epoch 0 (the founding) first; rotations that made them.
        self.chain: list[AdminSet] = [zone.admin_set()]
        self.rotations: list[Record] = []
        # Admissions and revocations that verified, to judge again when the
        # admin chain changes (digest -> raw).
        self._pool: dict[bytes, bytes] = {}
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
            r = records.verify(raw, self.zone, self._signers_for)
            if r.type == ROTATE:
                return self._rotate(r, digest, now)
        except MembershipError as e:
            # Forged or malformed stays so: not verified again (until the
            # admin chain changes).
            if "arrives before" not in str(e) and "after now" not in str(e):
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
        if len(self._pool) < 4 * MAX_MEMBERS:
            self._pool[digest] = raw
        old = self.latest.get(r.member)
        if now >= r.issued + records.MAX_ADMISSION_S or (old is not None and _rank(r) <= _rank(old)):
            self.counts["stale"] += 1
            return "stale"
        self.latest[r.member] = r
        self._version += 1
        self.counts["new"] += 1
        return "new"

    def admins_at(self, t: int) -> AdminSet:
        """The admin set in force at time `t`: the last whose rotation was
        issued at or before it."""
        current = self.chain[0]
        for s in self.chain[1:]:
            if s.since <= t:
                current = s
        return current

    def check(self, raw: bytes) -> Record:
        """Verify a record as `offer` would, without taking it: signed by k
        of the admin set in force at its issue time (a rotation: by the set
        it replaces). Raises MembershipError."""
        return records.verify(raw, self.zone, self._signers_for)

    @property
    def admins(self) -> AdminSet:
        """The admin set that signs new records."""
        return self.chain[-1]

    def _signers_for(self, r: Record) -> AdminSet:
        """The admin set whose signatures `r` needs: for a rotation the set
        it replaces, otherwise the set in force at its issue time."""
        if r.type == ROTATE:
            if r.epoch > len(self.chain):
                raise MembershipError(f"rotation to admin set {r.epoch} arrives before set {r.epoch - 1}")
            return self.chain[r.epoch - 1]
        return self.admins_at(r.issued)

    def _rotate(self, r: Record, digest: bytes, now: float) -> str:
        """A rotation extends the chain by one epoch, signed by k of the
        set it replaces, issued after that set began and not in the future.
        Two different rotations of one epoch (admins must never sign two):
        the lower (issued, digest) stands on every coordinator, and records
        are judged again under the chain that results."""
        epoch = r.epoch
        prev = self.chain[epoch - 1]
        if r.issued <= prev.since:
            raise MembershipError(f"rotation to admin set {epoch} issued at {r.issued}, not after set {epoch - 1} "
                                  f"began ({prev.since})")
        if r.issued > now + MAX_CLOCK_SKEW_S:
            raise MembershipError(f"issued at {r.issued}, more than {MAX_CLOCK_SKEW_S} s after now {now:.0f}")
        self._judged[digest] = r.type
        if epoch < len(self.chain):
            held = self.rotations[epoch - 1]
            if (held.issued, held.digest) <= (r.issued, r.digest):
                self.counts["stale"] += 1
                return "stale"
            del self.chain[epoch:], self.rotations[epoch - 1:]
        self.chain.append(AdminSet(epoch, r.admins, r.k, r.issued))
        self.rotations.append(r)
        self._rejudge(now)
        self.counts["new"] += 1
        return "new"

    def _rejudge(self, now: float) -> None:
        """After the admin chain changed: every held record judged again
        (one signed by admins no longer in force for its issue time drops out)."""
        pool = list(self._pool.values())
        self._pool.clear()
        self.latest.clear()
        # Verdicts hold for the chain they were made under: keep only the
        # chain's own rotations (a rotation dropped by a conflict may count
        # again under the new chain, and so may a refused record).
        self._judged = {r.digest: ROTATE for r in self.rotations}
        self._version += 1
        for raw in pool:
            try:
                self.offer(raw, now)
            except MembershipError:
                pass

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
        """The rotations (in order) and the deciding records, to keep
        across a restart."""
        return [r.raw for r in self.rotations] + [r.raw for _m, r in sorted(self.latest.items())]
