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
- MAX_RECORDS_PER_KEY: at most this many records are returned per key.
- MAX_TTL_S: the longest lifetime a record may claim.
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
MAX_RECORDS_PER_KEY = 512
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


def verify(raw: bytes, key: str, now: float) -> SignedRecord:
    """Parse and authenticate one record read under `key` at time `now`.
    Raises RecordError naming what is wrong."""
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


def select(
    raws: Iterable[bytes],
    key: str,
    now: float,
    accept: Callable[[SignedRecord], bool] | None = None,
    on_reject: Callable[[str], None] | None = None,
) -> list[SignedRecord]:
    """What a reader keeps from everything found under `key`: valid records,
    the newest per (publisher, slot), none from a publisher flooding the key,
    none refused by `accept` (e.g. a zone's allow-list), at most
    MAX_RECORDS_PER_KEY, ordered by publisher, slot."""
    newest: dict[tuple[bytes, str], SignedRecord] = {}
    seen: set[bytes] = set()
    for raw in raws:
        raw = bytes(raw)
        if raw in seen:
            continue
        seen.add(raw)
        try:
            rec = verify(raw, key, now)
        except RecordError as e:
            if on_reject is not None:
                on_reject(str(e))
            continue
        if accept is not None and not accept(rec):
            if on_reject is not None:
                on_reject(f"publisher {rec.publisher_id} not accepted under {key!r}")
            continue
        k = (rec.publisher, rec.slot)
        old = newest.get(k)
        if old is None or (rec.seq, rec.raw) > (old.seq, old.raw):
            newest[k] = rec
    per_publisher: dict[bytes, int] = {}
    for pub, _slot in newest:
        per_publisher[pub] = per_publisher.get(pub, 0) + 1
    flooders = {pub for pub, n in per_publisher.items() if n > MAX_SLOTS_PER_PUBLISHER}
    if flooders and on_reject is not None:
        for pub in flooders:
            on_reject(f"publisher {key_id(pub).hex()} holds {per_publisher[pub]} slots under {key!r}: "
                      f"more than {MAX_SLOTS_PER_PUBLISHER}, all ignored")
    kept = [r for k, r in sorted(newest.items()) if k[0] not in flooders]
    return kept[:MAX_RECORDS_PER_KEY]


def newer(rec: SignedRecord, last: dict[tuple[bytes, str], int]) -> bool:
    """For listeners: True (and remember it) if `rec` is newer than anything
    seen before from its publisher and slot."""
    k = (rec.publisher, rec.slot)
    if k in last and last[k] >= rec.seq:
        return False
    last[k] = rec.seq
    return True
