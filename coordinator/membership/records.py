"""Zone membership records: the founding record, admissions, revocations.
Build, sign, parse, verify. No I/O, no clock reads (time is passed in).

A zone has no operator. It is founded at install with a set of admin keys
and a threshold k; the founding record is a canonical CBOR map and its
SHA-256 is the zone id, which every coordinator is configured with. Nobody
can change a zone's admins or k without changing its id.

A membership record says something about one coordinator key, and counts
only with valid signatures of at least k of the zone's admins. It is a
COSE_Sign (RFC 9052 section 4.1, tag 98: one payload, several signers),
each signature ES256K over the Sig_structure, as readings and overlay
records sign (shared/cose.py, coordinator/overlay/records.py). Admins sign
offline, each adding a signature to the same file; the payload is never
re-encoded, so every signature covers the same bytes.

Payload (canonical CBOR map, RFC 8949 4.2.1; anything else is refused):

    1 v           uint   format version, 1
    2 type        text   "admit" or "revoke"
    3 zone        bytes  the zone id (32 bytes): a record for another zone
                         is refused
    4 issued      uint   seconds since the epoch; orders the records about
                         one member (a newer one supersedes an older one)
    5 expires     uint   admit only: membership ends then (at most
                         MAX_ADMISSION_S after issued)
    6 member      bytes  the coordinator's compressed public key (33 bytes)
    7 connection  text   admit only: the grid connection point (1..64 bytes)
    8 feeder      text   admit only: the feeder it hangs on (1..64 bytes)
    9 reason      text   revoke only, optional (0..64 bytes)

Admin key rotation ("rotate", signed like the others by k admins of the
set in force): 1 v, 2 type "rotate", 3 zone, 4 issued, 13 epoch (1, 2, ...:
one more than the set it replaces), 11 admins, 12 k: the new set, which
signs every record issued from then on. The zone id stays the founding
hash; the chain of rotations is learnt from the records (roster.py).

Founding record (canonical CBOR map, not signed: its hash is the id):

    1 v 1, 2 type "found", 10 name text (the market zone name),
    11 admins [bytes 33, ...] (sorted, distinct, 1..MAX_ADMINS),
    12 k uint (1..len(admins)), 4 issued uint (founding time)
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Callable

from bitcoinx import PrivateKey, PublicKey, der_signature_to_compact

from microgrid.shared import cbor, cose, secp256k1
from microgrid.shared.reading import ALG_ES256K, key_id

VERSION = 1
TAG_SIGN = 98  # COSE_Sign
FOUND, ADMIT, REVOKE, ROTATE = "found", "admit", "revoke", "rotate"
MAX_ADMINS = 12
MAX_TEXT_BYTES = 64
# The longest an admission may run; a revocation is kept this long after
# it was issued, by which time every admission it beat has expired.
MAX_ADMISSION_S = 2 * 366 * 86400
# A record, signatures included, must fit in one overlay record body
# (coordinator/overlay/records.py MAX_BODY_BYTES = 1536).
MAX_RECORD_BYTES = 1400
ZONE_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789._-"

L_V, L_TYPE, L_ZONE, L_ISSUED, L_EXPIRES, L_MEMBER, L_CONNECTION, L_FEEDER, L_REASON = 1, 2, 3, 4, 5, 6, 7, 8, 9
L_NAME, L_ADMINS, L_K, L_EPOCH = 10, 11, 12, 13
MAX_EPOCH = 1000


class MembershipError(ValueError):
    """A membership or founding record is malformed, forged or not for us."""


@dataclass(frozen=True)
class Zone:
    """A founded zone: who its admins are and how many must sign."""

    name: str
    admins: tuple[bytes, ...]  # compressed public keys, sorted
    k: int
    founded: int

    def encode(self) -> bytes:
        return bytes(cbor.dumps({L_V: VERSION, L_TYPE: FOUND, L_NAME: self.name, L_ADMINS: list(self.admins),
                                 L_K: self.k, L_ISSUED: self.founded}))

    @property
    def id(self) -> bytes:
        """The zone id: SHA-256 of the founding record."""
        return hashlib.sha256(self.encode()).digest()

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    def admin_by_kid(self) -> dict[bytes, bytes]:
        return {key_id(a): a for a in self.admins}

    def admin_set(self) -> "AdminSet":
        """The founding admins: epoch 0, in force from the founding."""
        return AdminSet(0, self.admins, self.k, self.founded)


@dataclass(frozen=True)
class AdminSet:
    """The admins who sign records issued from `since` (until the next
    rotation's issue time)."""

    epoch: int
    admins: tuple[bytes, ...]
    k: int
    since: int

    def admin_by_kid(self) -> dict[bytes, bytes]:
        return {key_id(a): a for a in self.admins}


def found(name: str, admins: list[bytes], k: int, founded: int) -> Zone:
    """A new zone, checked as every reader checks it."""
    zone = Zone(name, tuple(sorted(bytes(a) for a in admins)), k, founded)
    check_zone(zone)
    return zone


def check_zone(zone: Zone) -> None:
    if not isinstance(zone.name, str) or not 1 <= len(zone.name) <= 32 or \
            any(c not in ZONE_NAME_CHARS for c in zone.name):
        raise MembershipError(f"zone name {zone.name!r}: expected 1..32 characters of [a-z0-9._-]")
    _check_admins(zone.admins, zone.k)
    _check_uint(zone.founded, "founded")


def _check_admins(admins: Any, k: Any) -> None:
    if not isinstance(admins, tuple) or not 1 <= len(admins) <= MAX_ADMINS:
        raise MembershipError(f"{len(admins) if isinstance(admins, tuple) else admins!r} admin keys: "
                              f"expected 1..{MAX_ADMINS}")
    for a in admins:
        _check_key(a, "admin key")
    if list(admins) != sorted(set(admins)):
        raise MembershipError("admin keys must be distinct (and are kept sorted)")
    if len({key_id(a) for a in admins}) != len(admins):
        raise MembershipError("two admin keys share a key id: pick another key")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(admins):
        raise MembershipError(f"threshold k={k!r}: expected 1..{len(admins)} (the number of admins)")


def parse_zone(data: bytes) -> Zone:
    """A founding record as stored in a file (`microgrid zone found`)."""
    p = _canonical_map(data, "founding record")
    if p.get(L_V) != VERSION or p.get(L_TYPE) != FOUND or set(p) != {L_V, L_TYPE, L_NAME, L_ADMINS, L_K, L_ISSUED}:
        raise MembershipError("not a version-1 founding record {v, type: found, name, admins, k, issued}")
    admins = p[L_ADMINS]
    if not isinstance(admins, list) or not all(isinstance(a, bytes) for a in admins):
        raise MembershipError("admins: expected a list of 33-byte keys")
    zone = Zone(p[L_NAME], tuple(admins), p[L_K], p[L_ISSUED])
    check_zone(zone)
    if zone.encode() != bytes(data):
        raise MembershipError("founding record is not in canonical form")
    return zone


@dataclass(frozen=True)
class Record:
    """A membership record whose payload parsed (signatures not yet checked
    unless it came from `verify`)."""

    type: str
    zone: bytes
    issued: int
    member: bytes
    expires: int = 0  # admit only
    connection: str = ""  # admit only
    feeder: str = ""  # admit only
    reason: str = ""  # revoke only
    signers: tuple[bytes, ...] = ()  # admin keys whose signatures verified
    raw: bytes = b""
    epoch: int = 0  # rotate only: the new set's epoch, its admins and k
    admins: tuple[bytes, ...] = ()
    k: int = 0

    @property
    def member_id(self) -> str:
        """The member's key id (for a rotation: "epoch-N")."""
        return f"epoch-{self.epoch}" if self.type == ROTATE else key_id(self.member).hex()

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    def order(self) -> tuple[int, int]:
        """Newer wins; at the same second a revocation beats an admission."""
        return (self.issued, 1 if self.type == REVOKE else 0)

    def payload(self) -> bytes:
        return encode_payload(self)


def encode_payload(r: Record) -> bytes:
    if r.type == ROTATE:
        return bytes(cbor.dumps({L_V: VERSION, L_TYPE: r.type, L_ZONE: r.zone, L_ISSUED: r.issued,
                                 L_EPOCH: r.epoch, L_ADMINS: list(r.admins), L_K: r.k}))
    m: dict[int, Any] = {L_V: VERSION, L_TYPE: r.type, L_ZONE: r.zone, L_ISSUED: r.issued, L_MEMBER: r.member}
    if r.type == ADMIT:
        m.update({L_EXPIRES: r.expires, L_CONNECTION: r.connection, L_FEEDER: r.feeder})
    elif r.reason:
        m[L_REASON] = r.reason
    return bytes(cbor.dumps(m))


def admission(zone: Zone, member: bytes, connection: str, feeder: str, issued: int, expires: int) -> Record:
    r = Record(ADMIT, zone.id, issued, bytes(member), expires, connection, feeder)
    _check_record(r, zone)
    return r


def revocation(zone: Zone, member: bytes, issued: int, reason: str = "") -> Record:
    r = Record(REVOKE, zone.id, issued, bytes(member), reason=reason)
    _check_record(r, zone)
    return r


def rotation(zone: Zone, epoch: int, admins: list[bytes], k: int, issued: int) -> Record:
    """A new admin set for records issued from `issued` on; signed by k of
    the set of epoch - 1."""
    r = Record(ROTATE, zone.id, issued, b"", epoch=epoch, admins=tuple(sorted(bytes(a) for a in admins)), k=k)
    _check_record(r, zone)
    return r


# -- the signed envelope ---------------------------------------------------------


def _sig_structure(sign_protected: bytes, payload: bytes) -> bytes:
    # RFC 9052 4.4: ["Signature", body_protected, sign_protected, external_aad, payload];
    # the body's protected header is empty.
    return bytes(cbor.dumps(["Signature", b"", sign_protected, b"", payload]))


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def envelope(payload: bytes, signatures: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """COSE_Sign bytes of `payload` with `signatures` as (protected, r||s)."""
    sigs = [[p, {}, s] for p, s in (signatures or [])]
    return bytes(cbor.dumps(cbor.Tag(TAG_SIGN, [b"", {}, payload, sigs])))


def unsigned(record: Record) -> bytes:
    """The file an admin starts from: the payload, no signature yet."""
    return envelope(record.payload())


def _open(raw: bytes) -> tuple[bytes, list[tuple[bytes, dict[Any, Any], bytes]]]:
    """Payload bytes and the (protected bytes, headers, signature) of each
    signer, as received."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) > MAX_RECORD_BYTES:
        size = len(raw) if isinstance(raw, (bytes, bytearray)) else type(raw).__name__
        raise MembershipError(f"record of {size} bytes: expected bytes, at most {MAX_RECORD_BYTES}")
    try:
        obj = cbor.loads(bytes(raw))
    except cbor.CBORError as e:
        raise MembershipError(f"not CBOR: {e}") from None
    if not isinstance(obj, cbor.Tag) or obj.tag != TAG_SIGN:
        raise MembershipError("not a COSE_Sign message (CBOR tag 98)")
    v = obj.value
    if not isinstance(v, list) or len(v) != 4:
        raise MembershipError("COSE_Sign must be an array of 4 items")
    protected, unprotected, payload, sigs = v
    if protected != b"" or unprotected != {} or not isinstance(payload, bytes) or not isinstance(sigs, list):
        raise MembershipError("COSE_Sign: expected empty body headers, an attached payload and a signature list")
    if len(sigs) > MAX_ADMINS:
        raise MembershipError(f"{len(sigs)} signatures: at most {MAX_ADMINS}")
    out = []
    for s in sigs:
        if not isinstance(s, list) or len(s) != 3 or not isinstance(s[0], bytes) or s[1] != {} \
                or not isinstance(s[2], bytes):
            raise MembershipError("COSE_Signature must be [protected bytes, {}, signature bytes]")
        try:
            headers = cbor.loads(s[0])
        except cbor.CBORError as e:
            raise MembershipError(f"signature header is not CBOR: {e}") from None
        if not isinstance(headers, dict) or set(headers) != {cose.HDR_ALG, cose.HDR_KID}:
            raise MembershipError("signature header must be {alg, kid}")
        if headers[cose.HDR_ALG] != ALG_ES256K:
            raise MembershipError(f"signature alg {headers[cose.HDR_ALG]!r}: expected ES256K ({ALG_ES256K})")
        out.append((s[0], headers, s[2]))
    return payload, out


def add_signature(raw: bytes, secret: PrivateKey) -> bytes:
    """Sign the record in `raw` (as an admin) and return it with the new
    signature added. Signing twice with one key is refused."""
    payload, sigs = _open(raw)
    parse_payload(payload)
    public = secret.public_key.to_bytes(compressed=True)
    kid = key_id(public)
    if any(h[cose.HDR_KID] == kid for _p, h, _s in sigs):
        raise MembershipError(f"already signed by key {kid.hex()}")
    protected = bytes(cose.encode_protected(ALG_ES256K, kid))
    # libsecp256k1: RFC 6979 nonces, low S (as verify requires).
    sig = der_signature_to_compact(secret.sign(_sig_structure(protected, payload), hasher=_sha256))
    return envelope(payload, [(p, s) for p, _h, s in sigs] + [(protected, sig)])


def signed(record: Record, *secrets: PrivateKey) -> bytes:
    """`record` signed by each of `secrets` (tests, the demo, a single admin)."""
    raw = unsigned(record)
    for s in secrets:
        raw = add_signature(raw, s)
    return raw


def parse_payload(payload: bytes) -> Record:
    p = _canonical_map(payload, "payload")
    if p.get(L_V) != VERSION:
        raise MembershipError(f"version {p.get(L_V)!r}: expected {VERSION}")
    kind = p.get(L_TYPE)
    if kind == ADMIT:
        want = {L_V, L_TYPE, L_ZONE, L_ISSUED, L_EXPIRES, L_MEMBER, L_CONNECTION, L_FEEDER}
    elif kind == REVOKE:
        want = {L_V, L_TYPE, L_ZONE, L_ISSUED, L_MEMBER} | ({L_REASON} if L_REASON in p else set())
    elif kind == ROTATE:
        want = {L_V, L_TYPE, L_ZONE, L_ISSUED, L_EPOCH, L_ADMINS, L_K}
    else:
        raise MembershipError(f"type {kind!r}: expected \"admit\", \"revoke\" or \"rotate\"")
    if set(p) != want:
        raise MembershipError(f"{kind} record fields {sorted(p, key=repr)}: expected {sorted(want)}")
    admins = p.get(L_ADMINS, [])
    if not isinstance(admins, list):
        raise MembershipError("admins: expected a list of 33-byte keys")
    r = Record(kind, p[L_ZONE], p[L_ISSUED], p.get(L_MEMBER, b""), p.get(L_EXPIRES, 0), p.get(L_CONNECTION, ""),
               p.get(L_FEEDER, ""), p.get(L_REASON, ""), epoch=p.get(L_EPOCH, 0), admins=tuple(admins),
               k=p.get(L_K, 0))
    _check_record(r, None)
    return r


def parse(raw: bytes) -> Record:
    """The record in `raw`, its signatures NOT checked (for `show`)."""
    payload, _sigs = _open(raw)
    return parse_payload(payload)


def signer_kids(raw: bytes) -> list[bytes]:
    """Key ids of the signatures present (for `show`; not verified)."""
    return [h[cose.HDR_KID] for _p, h, _s in _open(raw)[1]]


def verify(raw: bytes, zone: Zone, signers_set: AdminSet | Callable[[Record], AdminSet] | None = None) -> Record:
    """The record in `raw` if it is for `zone` and carries valid signatures
    of at least k admins of `signers_set` (default: the founding admins; a
    callable picks the set from the parsed record) and nothing else. Raises
    MembershipError naming what is wrong. Time is not judged here, nor
    which admin set was in force (see roster.py)."""
    payload, sigs = _open(raw)
    r = parse_payload(payload)
    if r.zone != zone.id:
        raise MembershipError(f"record for zone {r.zone.hex()[:16]}, not ours ({zone.id_hex[:16]})")
    aset = signers_set(r) if callable(signers_set) else (signers_set or zone.admin_set())
    admins = aset.admin_by_kid()
    signers: list[bytes] = []
    for protected, headers, sig in sigs:
        kid = headers[cose.HDR_KID]
        admin = admins.get(kid) if isinstance(kid, bytes) else None
        if admin is None:
            raise MembershipError(f"signed by {kid.hex() if isinstance(kid, bytes) else kid!r}, "
                                  "not an admin of this zone")
        if admin in signers:
            raise MembershipError(f"admin {kid.hex()} signed twice")
        if len(sig) != 64 or int.from_bytes(sig[32:], "big") > secp256k1.HALF_N:
            raise MembershipError(f"signature of admin {kid.hex()}: expected 64 bytes r||s with low S")
        try:
            good = PublicKey.from_bytes(admin).verify_der_signature(
                secp256k1.der_signature(sig), _sig_structure(protected, payload), hasher=_sha256)
        except (ValueError, TypeError):
            good = False
        if not good:
            raise MembershipError(f"signature of admin {kid.hex()} does not verify")
        signers.append(admin)
    if len(signers) < aset.k:
        raise MembershipError(f"signed by {len(signers)} admin(s): this zone needs {aset.k} of {len(aset.admins)}"
                              + (f" (admin set {aset.epoch})" if aset.epoch else ""))
    return dataclasses.replace(r, signers=tuple(signers), raw=bytes(raw))


# -- checks ------------------------------------------------------------------------


def _canonical_map(data: bytes, what: str) -> dict[Any, Any]:
    try:
        p = cbor.loads(bytes(data))
    except (cbor.CBORError, TypeError) as e:
        raise MembershipError(f"{what} is not CBOR: {e}") from None
    if not isinstance(p, dict):
        raise MembershipError(f"{what} is a {type(p).__name__}: expected a map")
    try:
        again = cbor.dumps(p)
    except cbor.CBORError as e:
        raise MembershipError(f"{what}: {e}") from None
    if again != bytes(data):
        raise MembershipError(f"{what} is not in canonical CBOR (RFC 8949 4.2.1)")
    return p


def _check_uint(v: Any, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**40:
        raise MembershipError(f"{name}={v!r}: expected seconds since the epoch")


def _check_key(k: Any, name: str) -> None:
    if not isinstance(k, bytes) or len(k) != 33 or k[0] not in (2, 3):
        raise MembershipError(f"{name}: expected a 33-byte compressed public key")
    try:
        PublicKey.from_bytes(k)  # libsecp256k1: on the curve
    except ValueError as e:
        raise MembershipError(f"{name}: not a point on secp256k1 ({e})") from None


def _check_text(v: Any, name: str, least: int) -> None:
    if not isinstance(v, str) or not least <= len(v.encode()) <= MAX_TEXT_BYTES or \
            any(ord(c) < 32 for c in v):
        raise MembershipError(f"{name}={v!r}: expected {least}..{MAX_TEXT_BYTES} bytes of printable text")


def _check_record(r: Record, zone: Zone | None) -> None:
    if not isinstance(r.zone, bytes) or len(r.zone) != 32:
        raise MembershipError("zone: expected a 32-byte zone id")
    if zone is not None and r.zone != zone.id:
        raise MembershipError("record for another zone")
    _check_uint(r.issued, "issued")
    if r.type == ROTATE:
        if isinstance(r.epoch, bool) or not isinstance(r.epoch, int) or not 1 <= r.epoch <= MAX_EPOCH:
            raise MembershipError(f"epoch={r.epoch!r}: expected 1..{MAX_EPOCH}")
        _check_admins(r.admins, r.k)
        return
    _check_key(r.member, "member")
    if r.type == ADMIT:
        _check_uint(r.expires, "expires")
        if not r.issued < r.expires <= r.issued + MAX_ADMISSION_S:
            raise MembershipError(f"admission from {r.issued} to {r.expires}: expected to end after it starts and "
                                  f"within {MAX_ADMISSION_S // 86400} days")
        _check_text(r.connection, "connection", 1)
        _check_text(r.feeder, "feeder", 1)
    elif r.type == REVOKE:
        _check_text(r.reason, "reason", 0)
    else:
        raise MembershipError(f"type {r.type!r}: expected admit or revoke")
