"""Signed overlay records: build, verify, select. No I/O, no clock reads.

Anyone can write any bytes under any key of a DHT, so nothing read from the
overlay is trusted until it passes `verify`. A record is a COSE_Sign1
(RFC 9052) signed with ES256K by the publishing coordinator's secp256k1 key,
the same scheme as meter readings (shared/reading.py); only the payload
differs. The payload is a CBOR map with small integer labels:

    1 key        text   the overlay key it was published under; a record
                        copied to another key is refused there
    2 slot       text   the publisher's slot under that key ("" by default);
                        a newer record from the same publisher and slot
                        supersedes the older one
    3 seq        uint   publisher's sequence number (milliseconds since the
                        epoch, strictly increasing per publisher)
    4 issued     uint   seconds since the epoch when signed
    5 expires    uint   seconds since the epoch after which it is dead
    6 publisher  bytes  compressed SEC1 public key (33 bytes); the kid in the
                        protected header is key_id(publisher)
    7 body       bytes  what the caller published

Limits (documented for later namespaces: market orders, clearing results,
channel announcements):
- MAX_RECORD_BYTES: an encoded record above this is dropped unread.
- MAX_BODY_BYTES: a body above this is refused at publish time.
- MAX_SLOTS_PER_PUBLISHER: a publisher holding more live slots than this
  under one key is flooding it; all its records under that key are ignored.
- MAX_PUBLISHERS_PER_KEY: a reader keeps records of at most this many
  publishers per key from an open read (memory bound); publishers the reader
  asked for by name (`Selector.offer(priority=True)`) are always kept, so an
  attacker's many keys cannot crowd out the ones a reader expects. There is
  no global cut on the number of records: each publisher gets its own slots.
- MAX_TTL_S: the longest lifetime a record may claim.

Every value also carries, outside the signed record, an OpenDHT `user_type`
string `publisher_tag(publisher)`: readers ask storing nodes for one
publisher's values only (OpenDHT's `Where user_type=...`), which a flood of
values without that tag cannot slow down (SPEC.md, "Reading under floods").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable

from bitcoinx import PrivateKey, PublicKey, der_signature_to_compact

from microgrid.shared import cbor, cose, secp256k1
from microgrid.shared.reading import ALG_ES256K, key_id

MAX_RECORD_BYTES = 2048
MAX_BODY_BYTES = 1536
MAX_SLOTS_PER_PUBLISHER = 64
MAX_PUBLISHERS_PER_KEY = 20000
# Remembered newest versions (key, publisher, slot) per reader, for replay
# protection (ReplayGuard): some 15 MB at most (records of ~700 bytes);
# a zone of 1,000 households publishes about 3,000 per interval.
MAX_REMEMBERED = 20_000
TAG_PREFIX = "mg1:"
MAX_TTL_S = 24 * 3600
MAX_KEY_CHARS = 200
MAX_SLOT_CHARS = 64
# A record issued further in the future than this (clock skew between
# coordinators) is refused.
MAX_CLOCK_SKEW_S = 300
# Listen deliveries per publisher (all keys together): a burst, then a
# sustained rate, in records per second of the overlay's clock. Far above
# what a coordinator publishes (a few orders per interval, a record a
# minute while it trades); a flood beyond it is dropped unread by the
# listener (a get still returns each slot's newest version).
LISTEN_BURST = 60
LISTEN_RATE_PER_S = 2.0

L_KEY, L_SLOT, L_SEQ, L_ISSUED, L_EXPIRES, L_PUBLISHER, L_BODY = 1, 2, 3, 4, 5, 6, 7


class RecordError(ValueError):
    """A record is malformed, forged, expired or breaks a limit."""


@dataclass(frozen=True)
class SignedRecord:
    """A record whose signature verified; `raw` is the bytes as received."""

    key: str
    slot: str
    seq: int
    issued: int
    expires: int
    publisher: bytes  # compressed SEC1 public key
    body: bytes
    raw: bytes

    @property
    def publisher_id(self) -> str:
        """The publisher's key id in hex (same derivation as device ids)."""
        return key_id(self.publisher).hex()

    @property
    def namespace(self) -> str:
        """The first path segment of the key ("dir", "orders", ...)."""
        return self.key.split("/", 1)[0]


def publisher_tag(publisher: bytes) -> str:
    """The OpenDHT user_type of `publisher`'s values: "mg1:" and the hex of
    its key id (8 bytes). A hint for storing nodes' filters, never trusted:
    the signature is what counts."""
    return TAG_PREFIX + key_id(publisher).hex()


def encode_payload(key: str, slot: str, seq: int, issued: int, expires: int, publisher: bytes, body: bytes) -> bytes:
    return bytes(cbor.dumps({
        L_KEY: key, L_SLOT: slot, L_SEQ: seq, L_ISSUED: issued,
        L_EXPIRES: expires, L_PUBLISHER: publisher, L_BODY: body,
    }))


def sign(secret: PrivateKey, key: str, body: bytes, seq: int, issued: int, ttl_s: int, slot: str = "") -> bytes:
    """Build and sign a record. Raises RecordError for values we would
    refuse ourselves when reading them back."""
    check_publishable(key, body, ttl_s, slot)
    publisher = secret.public_key.to_bytes(compressed=True)
    payload = encode_payload(key, slot, seq, issued, issued + ttl_s, publisher, body)
    protected = bytes(cose.encode_protected(ALG_ES256K, key_id(publisher)))
    tbs = bytes(cose.sig_structure(protected, payload))
    # libsecp256k1 signs RFC 6979 with low S, as ES256K here requires.
    signature = der_signature_to_compact(secret.sign(tbs, hasher=_sha256))
    return bytes(cose.build(protected, payload, signature))


def check_publishable(key: str, body: bytes, ttl_s: int, slot: str = "") -> None:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS:
        raise RecordError(f"key {key!r}: expected 1..{MAX_KEY_CHARS} characters")
    if not isinstance(slot, str) or len(slot) > MAX_SLOT_CHARS:
        raise RecordError(f"slot {slot!r}: expected at most {MAX_SLOT_CHARS} characters")
    if not isinstance(body, (bytes, bytearray)) or len(body) > MAX_BODY_BYTES:
        size = len(body) if isinstance(body, (bytes, bytearray)) else type(body).__name__
        raise RecordError(f"body of {size} bytes under {key!r}: expected bytes, at most {MAX_BODY_BYTES}")
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S:
        raise RecordError(f"ttl_s={ttl_s!r} for {key!r}: expected an integer in 1..{MAX_TTL_S}")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def verify(raw: bytes, key: str, now: float,
           accept_publisher: Callable[[bytes], bool] | None = None) -> SignedRecord:
    """Parse and authenticate one record read under `key` at time `now`.
    `accept_publisher(public_key)` (e.g. a zone's membership) is asked
    before the signature is checked, so records of publishers nobody
    accepts cost no signature verification. Raises RecordError naming what
    is wrong."""
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError(f"record of {len(raw)} bytes: larger than {MAX_RECORD_BYTES}")
    try:
        msg = cose.parse(raw)
    except cose.COSEError as e:
        raise RecordError(f"not a COSE_Sign1 record: {e}") from None
    if msg.headers.get(cose.HDR_ALG) != ALG_ES256K:
        raise RecordError(f"alg {msg.headers.get(cose.HDR_ALG)!r}: expected ES256K ({ALG_ES256K})")
    try:
        p = cbor.loads(msg.payload)
    except cbor.CBORError as e:
        raise RecordError(f"payload is not CBOR: {e}") from None
    if not isinstance(p, dict):
        raise RecordError(f"payload is a {type(p).__name__}: expected a map")
    rec_key, slot, seq, issued = p.get(L_KEY), p.get(L_SLOT), p.get(L_SEQ), p.get(L_ISSUED)
    expires, publisher, body = p.get(L_EXPIRES), p.get(L_PUBLISHER), p.get(L_BODY)
    if not isinstance(rec_key, str) or not isinstance(slot, str) or len(slot) > MAX_SLOT_CHARS:
        raise RecordError("key and slot must be text (slot at most %d characters)" % MAX_SLOT_CHARS)
    for name, v in (("seq", seq), ("issued", issued), ("expires", expires)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise RecordError(f"{name}={v!r}: expected a non-negative integer")
    assert isinstance(seq, int) and isinstance(issued, int) and isinstance(expires, int)
    if not isinstance(publisher, bytes) or len(publisher) != 33:
        raise RecordError("publisher must be a 33-byte compressed public key")
    if not isinstance(body, bytes):
        raise RecordError("body must be a byte string")
    if rec_key != key:
        raise RecordError(f"record for key {rec_key!r} read under {key!r}: refused (copied record)")
    if msg.headers.get(cose.HDR_KID) != key_id(publisher):
        raise RecordError("kid does not match the publisher key")
    if accept_publisher is not None and not accept_publisher(publisher):
        raise RecordError(f"publisher {key_id(publisher).hex()} not accepted under {key!r}")
    sig = msg.signature
    if len(sig) != 64:
        raise RecordError(f"signature of {len(sig)} bytes: expected 64 (r||s)")
    if int.from_bytes(sig[32:], "big") > secp256k1.HALF_N:
        raise RecordError("signature has high S (malleated); ES256K here requires low S")
    try:
        good = PublicKey.from_bytes(publisher).verify_der_signature(
            secp256k1.der_signature(sig), msg.to_be_signed(), hasher=_sha256)
    except (ValueError, TypeError):
        good = False
    if not good:
        raise RecordError(f"signature does not verify with publisher {key_id(publisher).hex()}")
    # Time checks after the signature, so a forger learns nothing from them.
    if expires <= now:
        raise RecordError(f"expired at {expires}, now {now:.0f}")
    if issued > now + MAX_CLOCK_SKEW_S:
        raise RecordError(f"issued at {issued}, more than {MAX_CLOCK_SKEW_S} s after now {now:.0f}")
    if expires - issued > MAX_TTL_S or expires < issued:
        raise RecordError(f"lifetime {expires - issued} s: expected 1..{MAX_TTL_S}")
    return SignedRecord(rec_key, slot, seq, issued, expires, publisher, body, bytes(raw))


class Selector:
    """What a reader keeps from the values found under one key, fed one raw
    value at a time as they arrive: valid records, the newest per
    (publisher, slot), none from a publisher flooding the key (more than
    MAX_SLOTS_PER_PUBLISHER slots), none refused by `accept_publisher` or
    `accept`. Counts what it refused (`invalid`), so a reader can tell a
    flood from a quiet key."""

    def __init__(self, key: str, now: float, accept: Callable[[SignedRecord], bool] | None = None,
                 on_reject: Callable[[str], None] | None = None,
                 accept_publisher: Callable[[bytes], bool] | None = None) -> None:
        self.key = key
        self.now = now
        self.accept = accept
        self.accept_publisher = accept_publisher
        self.on_reject = on_reject
        self.newest: dict[tuple[bytes, str], SignedRecord] = {}
        self.slots: dict[bytes, int] = {}
        self.invalid = 0
        self.offered = 0
        self._seen: set[bytes] = set()

    def _reject(self, why: str) -> None:
        self.invalid += 1
        if self.on_reject is not None:
            self.on_reject(why)

    def offer(self, raw: bytes, priority: bool = False) -> SignedRecord | None:
        """Judge one value; the record if it is now the newest of its
        (publisher, slot). `priority`: found by asking for its publisher,
        kept even when MAX_PUBLISHERS_PER_KEY others are already held."""
        raw = bytes(raw)
        self.offered += 1
        digest = hashlib.sha256(raw).digest()
        if digest in self._seen:
            return None
        self._seen.add(digest)
        try:
            rec = verify(raw, self.key, self.now, self.accept_publisher)
        except RecordError as e:
            self._reject(str(e))
            return None
        if self.accept is not None and not self.accept(rec):
            self._reject(f"publisher {rec.publisher_id} not accepted under {self.key!r}")
            return None
        k = (rec.publisher, rec.slot)
        old = self.newest.get(k)
        if old is None:
            if not priority and rec.publisher not in self.slots and len(self.slots) >= MAX_PUBLISHERS_PER_KEY:
                self._reject(f"more than {MAX_PUBLISHERS_PER_KEY} publishers under {self.key!r}: "
                             f"{rec.publisher_id} not kept")
                return None
            self.slots[rec.publisher] = self.slots.get(rec.publisher, 0) + 1
        elif (rec.seq, rec.raw) <= (old.seq, old.raw):
            return None
        self.newest[k] = rec
        return rec

    def has(self, publisher: bytes) -> bool:
        return publisher in self.slots and self.slots[publisher] <= MAX_SLOTS_PER_PUBLISHER

    def records(self) -> list[SignedRecord]:
        """The kept records, ordered by publisher, slot; flooders' dropped."""
        flooders = {pub for pub, n in self.slots.items() if n > MAX_SLOTS_PER_PUBLISHER}
        if flooders and self.on_reject is not None:
            for pub in flooders:
                self.on_reject(f"publisher {key_id(pub).hex()} holds {self.slots[pub]} slots under {self.key!r}: "
                               f"more than {MAX_SLOTS_PER_PUBLISHER}, all ignored")
        return [r for k, r in sorted(self.newest.items()) if k[0] not in flooders]


def select(
    raws: Iterable[bytes],
    key: str,
    now: float,
    accept: Callable[[SignedRecord], bool] | None = None,
    on_reject: Callable[[str], None] | None = None,
    accept_publisher: Callable[[bytes], bool] | None = None,
) -> list[SignedRecord]:
    """Selector over a list of raw values (see Selector)."""
    sel = Selector(key, now, accept, on_reject, accept_publisher)
    for raw in raws:
        sel.offer(raw)
    return sel.records()


class ReplayGuard:
    """Replay protection that does not need the newest version to be
    stored: a reader remembers the newest record it has seen per (key,
    publisher, slot) and never takes an older one as current. When the
    overlay returns an old version (replayed by anyone: old versions stay
    validly signed until they expire) or none, the remembered newer one is
    returned while it lives. Bounded: the oldest keys are forgotten first."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self.limit = limit
        self._by_key: dict[str, dict[tuple[bytes, str], SignedRecord]] = {}
        self._count = 0
        self.replays = 0

    def remember(self, rec: SignedRecord) -> bool:
        """Keep `rec` if it is the newest of its (key, publisher, slot);
        False when a newer one is remembered (a replay, or a stale copy)."""
        slots = self._by_key.setdefault(rec.key, {})
        k = (rec.publisher, rec.slot)
        old = slots.get(k)
        if old is not None and (old.seq, old.raw) > (rec.seq, rec.raw):
            return False
        if old is None:
            self._count += 1
        slots[k] = rec
        if self._count > self.limit:
            self._drop_expired(rec.issued)
        while self._count > self.limit and self._by_key:
            oldest = next(iter(self._by_key))
            self._count -= len(self._by_key.pop(oldest))
        return True

    def _drop_expired(self, now: float) -> None:
        for key in list(self._by_key):
            slots = self._by_key[key]
            for k in [k for k, r in slots.items() if r.expires <= now]:
                del slots[k]
                self._count -= 1
            if not slots:
                del self._by_key[key]

    def merge(self, key: str, found: list[SignedRecord], now: float,
              keep: Callable[[SignedRecord], bool] | None = None) -> list[SignedRecord]:
        """`found` with every record replaced by the newest remembered of
        its (publisher, slot), plus remembered ones not found, all live and
        passing `keep`; ordered by publisher, slot."""
        for rec in found:
            if not self.remember(rec):
                self.replays += 1
        slots = self._by_key.get(key, {})
        dead = [k for k, r in slots.items() if r.expires <= now]
        for k in dead:
            del slots[k]
            self._count -= 1
        return [r for _k, r in sorted(slots.items()) if keep is None or keep(r)]

    def latest(self, key: str, publisher: bytes, slot: str = "") -> SignedRecord | None:
        return self._by_key.get(key, {}).get((publisher, slot))


def newer(rec: SignedRecord, last: dict[tuple[bytes, str], int]) -> bool:
    """For listeners: True (and remember it) if `rec` is newer than anything
    seen before from its publisher and slot."""
    k = (rec.publisher, rec.slot)
    if k in last and last[k] >= rec.seq:
        return False
    last[k] = rec.seq
    return True
