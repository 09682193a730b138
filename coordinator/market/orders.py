"""Market orders: the Order, its canonical signed encoding, validation.

An order offers to buy or sell `quantity_wh` watt-hours delivered in one
interval of one zone, at no worse than `limit_sat_per_kwh` satoshis per kWh.
It is signed by its owner's coordinator key (secp256k1, the same keys the
overlay uses); an energy company's coordinator signs the same way.

Encoding (canonical CBOR, RFC 8949 section 4.2, via cbor2 canonical=True).
The body is a map with small integer labels:

    0 v          uint   format version, 1
    1 side       text   "buy" or "sell"
    2 zone       text   the zone (microgrid or feeder): 1..32 of [a-z0-9._-]
    3 start      uint   interval start, seconds since the epoch (UTC), a
                        multiple of the interval length
    4 length     uint   interval length in seconds (default 900 = 15 min)
    5 wh         uint   quantity, Wh, >= 1
    6 limit      uint   limit price, sat/kWh: a buyer pays at most, a seller
                        receives at least this
    7 expires    uint   seconds since the epoch; dead from then on
    8 owner      bytes  compressed SEC1 public key of the owner (33 bytes)
    9 nonce      uint   owner's number for this order, < 2**64
   10 created    uint   seconds since the epoch when the owner made it

The signed order is the CBOR array [1, body, signature]: `body` the encoded
map above as a byte string, `signature` the 64-byte compact (r || s, low S)
ECDSA signature by the owner over sha256(SIGN_CONTEXT || body).

The order hash is sha256 of the whole signed encoding. Decoding refuses any
encoding that is not byte-for-byte canonical and any high-S signature, so
an order has exactly one encoding and one hash: a relayed copy cannot be
made to look like a new order.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import cbor2
from bitcoinx import PrivateKey, PublicKey, compact_signature_to_der, der_signature_to_compact

log = logging.getLogger("microgrid.market.orders")

BUY = "buy"
SELL = "sell"
SIDES = (BUY, SELL)
FORMAT_VERSION = 1
DEFAULT_INTERVAL_S = 900
INTERVAL_LENGTHS_S = (300, 900, 1800, 3600)
SIGN_CONTEXT = b"microgrid/market/order/v1\x00"
MAX_ORDER_BYTES = 400
MAX_QUANTITY_WH = 100_000_000  # 100 MWh in one interval: a feeder, not a home
MAX_PRICE_SAT_PER_KWH = 100_000_000  # 1 BSV per kWh
MAX_NONCE = 2**64 - 1
ZONE_RE = re.compile(r"^[a-z0-9._-]{1,32}$")
# secp256k1 group order; a signature with s above N/2 is refused (low-S).
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

L_V, L_SIDE, L_ZONE, L_START, L_LENGTH, L_WH, L_LIMIT, L_EXPIRES, L_OWNER, L_NONCE, L_CREATED = range(11)

# Reasons an order is refused; each logged with the detail.
INVALID = "invalid"  # malformed, non-canonical, a field out of range
UNSIGNED = "unsigned"  # no signature, or one that does not verify
EXPIRED = "expired"  # expired when received, or before gate closure
DUPLICATE = "duplicate"  # same hash, or same owner and nonce, seen before
LATE = "after gate closure"  # received or created after the gate closed
WRONG_BOOK = "wrong book"  # another zone or interval than the book's
REASONS = (INVALID, UNSIGNED, EXPIRED, DUPLICATE, LATE, WRONG_BOOK)


class OrderError(ValueError):
    """An order was refused. `reason` is one of REASONS; the message says
    what failed, the value, and what was expected."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Order:
    """The terms of an order (unsigned)."""

    side: str
    zone: str
    interval_start: int
    quantity_wh: int
    limit_sat_per_kwh: int
    expires: int
    owner: bytes  # compressed SEC1 public key, 33 bytes
    nonce: int
    created: int
    interval_s: int = DEFAULT_INTERVAL_S

    @property
    def interval_end(self) -> int:
        return self.interval_start + self.interval_s

    @property
    def owner_hex(self) -> str:
        return self.owner.hex()

    def check(self) -> None:
        """Raise OrderError(INVALID) for a field out of range."""
        check_terms(self)


@dataclass(frozen=True)
class SignedOrder:
    """An order with its owner's signature; `encoded` is its one canonical
    encoding and `hash` = sha256(encoded)."""

    order: Order
    signature: bytes  # 64 bytes compact, low S
    encoded: bytes
    hash: bytes
    # What clearing reads, gathered once when the order is made or decoded
    # (next to a signature check it costs nothing): see clearing.py,
    # "Speed". `priority` is rule 3 of clearing.py as one integer.
    row: tuple = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        o = self.order
        buy = o.side == BUY
        price_part = MAX_PRICE_SAT_PER_KWH - o.limit_sat_per_kwh if buy else o.limit_sat_per_kwh
        priority = ((((0 if buy else 1) << 27 | price_part) << 41 | o.created) << 32
                    | int.from_bytes(self.hash[:4], "big"))
        object.__setattr__(self, "row", (
            self.hash, f"{o.zone}/{o.interval_start}+{o.interval_s}", buy, o.limit_sat_per_kwh, o.quantity_wh,
            o.owner, o.owner + o.nonce.to_bytes(8, "big"), priority))

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()

    # Shorthands used all over clearing and settlement.
    @property
    def side(self) -> str:
        return self.order.side

    @property
    def owner(self) -> bytes:
        return self.order.owner


def _int_in(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise OrderError(INVALID, f"{name}={value!r}: expected an integer in {lo}..{hi}")


def check_terms(o: Order) -> None:
    if o.side not in SIDES:
        raise OrderError(INVALID, f"side={o.side!r}: expected one of {SIDES}")
    if not isinstance(o.zone, str) or not ZONE_RE.match(o.zone):
        raise OrderError(INVALID, f"zone={o.zone!r}: expected 1..32 characters of [a-z0-9._-]")
    if o.interval_s not in INTERVAL_LENGTHS_S:
        raise OrderError(INVALID, f"interval_s={o.interval_s!r}: expected one of {INTERVAL_LENGTHS_S}")
    _int_in("interval_start", o.interval_start, 0, 2**40)
    if o.interval_start % o.interval_s:
        raise OrderError(INVALID, f"interval_start={o.interval_start}: expected a multiple of {o.interval_s}")
    _int_in("quantity_wh", o.quantity_wh, 1, MAX_QUANTITY_WH)
    _int_in("limit_sat_per_kwh", o.limit_sat_per_kwh, 0, MAX_PRICE_SAT_PER_KWH)
    _int_in("created", o.created, 0, 2**40)
    _int_in("expires", o.expires, o.created + 1, 2**40)
    _int_in("nonce", o.nonce, 0, MAX_NONCE)
    if not isinstance(o.owner, bytes) or len(o.owner) != 33 or o.owner[0] not in (2, 3):
        raise OrderError(INVALID, f"owner={o.owner!r}: expected a 33-byte compressed public key")


def encode_body(o: Order) -> bytes:
    return cbor2.dumps({
        L_V: FORMAT_VERSION, L_SIDE: o.side, L_ZONE: o.zone, L_START: o.interval_start,
        L_LENGTH: o.interval_s, L_WH: o.quantity_wh, L_LIMIT: o.limit_sat_per_kwh,
        L_EXPIRES: o.expires, L_OWNER: o.owner, L_NONCE: o.nonce, L_CREATED: o.created,
    }, canonical=True)


def _signed_message(body: bytes) -> bytes:
    return SIGN_CONTEXT + body


def sign_order(order: Order, key: PrivateKey) -> SignedOrder:
    """Check the terms and sign them with the owner's key. The order's
    `owner` must be that key's public key."""
    check_terms(order)
    pub = key.public_key.to_bytes(compressed=True)
    if pub != order.owner:
        raise OrderError(INVALID, f"owner={order.owner.hex()}: expected the signing key's {pub.hex()}")
    body = encode_body(order)
    # libsecp256k1 signs RFC 6979 (deterministic) with low S.
    signature = der_signature_to_compact(key.sign(_signed_message(body), hasher=_sha256))
    encoded = cbor2.dumps([FORMAT_VERSION, body, signature], canonical=True)
    return SignedOrder(order, signature, encoded, _sha256(encoded))


def make_order(key: PrivateKey, side: str, zone: str, interval_start: int, quantity_wh: int,
               limit_sat_per_kwh: int, expires: int, nonce: int, created: int,
               interval_s: int = DEFAULT_INTERVAL_S) -> SignedOrder:
    """Build and sign an order owned by `key`."""
    return sign_order(Order(side, zone, interval_start, quantity_wh, limit_sat_per_kwh, expires,
                            key.public_key.to_bytes(compressed=True), nonce, created, interval_s), key)


def decode_order(data: bytes) -> SignedOrder:
    """Parse and verify a signed order. Raises OrderError(INVALID) for a
    malformed or non-canonical encoding or a bad field, OrderError(UNSIGNED)
    for a missing or wrong signature."""
    if not isinstance(data, (bytes, bytearray)):
        raise OrderError(INVALID, f"order of type {type(data).__name__}: expected bytes")
    data = bytes(data)
    if not 0 < len(data) <= MAX_ORDER_BYTES:
        raise OrderError(INVALID, f"order of {len(data)} bytes: expected 1..{MAX_ORDER_BYTES}")
    try:
        outer = cbor2.loads(data)
    except Exception as e:  # cbor2 raises several types on garbage
        raise OrderError(INVALID, f"not CBOR ({e}): expected [1, body, signature]") from None
    if isinstance(outer, (bytes, dict)):
        # A bare body (or map) with no signature: what an unsigned order looks like.
        raise OrderError(UNSIGNED, "no signature: expected [1, body, signature]")
    # `type(...) is int`: CBOR true decodes to True, which equals 1 in Python.
    if not isinstance(outer, list) or len(outer) not in (2, 3) or type(outer[0]) is not int \
            or outer[0] != FORMAT_VERSION or not isinstance(outer[1], bytes):
        raise OrderError(INVALID, f"outer structure {type(outer).__name__}: expected [1, body, signature]")
    if len(outer) == 2 or not isinstance(outer[2], bytes) or not outer[2]:
        raise OrderError(UNSIGNED, "no signature: expected [1, body, signature]")
    body, signature = outer[1], outer[2]
    if cbor2.dumps(outer, canonical=True) != data:
        raise OrderError(INVALID, "non-canonical encoding: expected canonical CBOR")
    order = _decode_body(body)
    if len(signature) != 64:
        raise OrderError(UNSIGNED, f"signature of {len(signature)} bytes: expected 64 (compact r || s)")
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (0 < r < _N and 0 < s <= _N // 2):
        raise OrderError(UNSIGNED, "signature r/s out of range or high S: expected low-S compact ECDSA")
    try:
        pub = PublicKey.from_bytes(order.owner)
        ok = pub.verify_der_signature(compact_signature_to_der(signature), _signed_message(body), hasher=_sha256)
    except Exception as e:
        raise OrderError(UNSIGNED, f"signature check failed ({e}) for owner {order.owner.hex()}") from None
    if not ok:
        raise OrderError(UNSIGNED, f"signature does not verify for owner {order.owner.hex()}")
    return SignedOrder(order, signature, data, _sha256(data))


def _decode_body(body: bytes) -> Order:
    try:
        m = cbor2.loads(body)
    except Exception as e:
        raise OrderError(INVALID, f"body not CBOR ({e}): expected a map") from None
    if not isinstance(m, dict) or set(m) != set(range(11)) or any(type(k) is not int for k in m):
        got = list(m) if isinstance(m, dict) else type(m).__name__
        raise OrderError(INVALID, f"body labels {got}: expected the labels 0..10")
    if m[L_V] != FORMAT_VERSION:
        raise OrderError(INVALID, f"version {m[L_V]!r}: expected {FORMAT_VERSION}")
    if cbor2.dumps(m, canonical=True) != body:
        raise OrderError(INVALID, "non-canonical body: expected canonical CBOR")
    order = Order(side=m[L_SIDE], zone=m[L_ZONE], interval_start=m[L_START], quantity_wh=m[L_WH],
                  limit_sat_per_kwh=m[L_LIMIT], expires=m[L_EXPIRES], owner=m[L_OWNER], nonce=m[L_NONCE],
                  created=m[L_CREATED], interval_s=m[L_LENGTH])
    check_terms(order)
    return order


def order_hash(encoded: bytes) -> bytes:
    return _sha256(encoded)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- accepting orders into a book -----------------------------------------


def gate_closure(interval_start: int, gate_lead_s: int) -> int:
    """When the book for an interval closes: `gate_lead_s` before it starts."""
    return interval_start - gate_lead_s


class OrderFilter:
    """Accepts orders for one zone and interval until gate closure; refuses
    the rest with a logged reason. State in, verdicts out: the caller passes
    `now` (its clock) with each order, nothing here reads a clock.

    - INVALID / UNSIGNED: see decode_order.
    - WRONG_BOOK: another zone, interval start or length than this book's.
    - LATE: received at or after gate closure, or claiming to be created
      after it.
    - EXPIRED: expired when received, or expiring at or before gate
      closure (it would be dead when the book is cleared).
    - DUPLICATE: the same hash again, or the same (owner, nonce) with other
      terms. Between two different orders with one (owner, nonce), the one
      with the lower hash is kept whichever arrived first, so every
      coordinator holding both keeps the same one.
    """

    def __init__(self, zone: str, interval_start: int, interval_s: int = DEFAULT_INTERVAL_S,
                 gate_lead_s: int = 300, on_reject: Callable[[str, str], None] | None = None) -> None:
        self.zone = zone
        self.interval_start = interval_start
        self.interval_s = interval_s
        self.gate_closes_at = gate_closure(interval_start, gate_lead_s)
        self._by_hash: dict[bytes, SignedOrder] = {}
        self._by_nonce: dict[tuple[bytes, int], SignedOrder] = {}
        self.rejected: dict[str, int] = {r: 0 for r in REASONS}
        self._on_reject = on_reject

    def offer(self, data: bytes | SignedOrder, now: float) -> SignedOrder | None:
        """Take one order (encoded bytes or already decoded) received at
        `now`; return it if accepted, None if refused (reason logged)."""
        try:
            so = data if isinstance(data, SignedOrder) else decode_order(data)
            self._admit(so, now)
        except OrderError as e:
            self._reject(e)
            return None
        return so

    def _admit(self, so: SignedOrder, now: float) -> None:
        o = so.order
        if (o.zone, o.interval_start, o.interval_s) != (self.zone, self.interval_start, self.interval_s):
            raise OrderError(WRONG_BOOK, f"order {so.hash_hex[:16]} for {o.zone}/{o.interval_start}+{o.interval_s}s:"
                                         f" expected {self.zone}/{self.interval_start}+{self.interval_s}s")
        if now >= self.gate_closes_at:
            raise OrderError(LATE, f"order {so.hash_hex[:16]} received at {now}: gate closed at {self.gate_closes_at}")
        if o.created >= self.gate_closes_at:
            raise OrderError(LATE, f"order {so.hash_hex[:16]} created={o.created}: expected before gate closure"
                                   f" {self.gate_closes_at}")
        if o.expires <= now:
            raise OrderError(EXPIRED, f"order {so.hash_hex[:16]} expires={o.expires}: expected after now={now}")
        if o.expires <= self.gate_closes_at:
            raise OrderError(EXPIRED, f"order {so.hash_hex[:16]} expires={o.expires}: expected after gate closure"
                                      f" {self.gate_closes_at}")
        if so.hash in self._by_hash:
            raise OrderError(DUPLICATE, f"order {so.hash_hex[:16]} already in the book")
        ident = (o.owner, o.nonce)
        held = self._by_nonce.get(ident)
        if held is not None:
            if so.hash < held.hash:
                del self._by_hash[held.hash]
                self._by_hash[so.hash] = so
                self._by_nonce[ident] = so
                raise OrderError(DUPLICATE, f"order {held.hash_hex[:16]} replaced by {so.hash_hex[:16]}: same owner"
                                            f" {o.owner.hex()[:16]} and nonce {o.nonce}, lower hash kept")
            raise OrderError(DUPLICATE, f"order {so.hash_hex[:16]}: owner {o.owner.hex()[:16]} nonce {o.nonce}"
                                        f" already used by {held.hash_hex[:16]}")
        self._by_hash[so.hash] = so
        self._by_nonce[ident] = so

    def _reject(self, e: OrderError) -> None:
        self.rejected[e.reason] += 1
        log.info("order ignored (%s): %s", e.reason, e.detail)
        if self._on_reject:
            self._on_reject(e.reason, e.detail)

    def orders(self) -> list[SignedOrder]:
        """The accepted orders, sorted by hash (a canonical order)."""
        return [self._by_hash[h] for h in sorted(self._by_hash)]

    def __len__(self) -> int:
        return len(self._by_hash)


def dedupe(orders: Iterable[SignedOrder]) -> list[SignedOrder]:
    """The same rule as OrderFilter for a set gathered some other way: one
    order per hash, one per (owner, nonce) (the lowest hash); sorted by hash."""
    by_nonce: dict[tuple[bytes, int], SignedOrder] = {}
    for so in orders:
        ident = (so.order.owner, so.order.nonce)
        held = by_nonce.get(ident)
        if held is None or so.hash < held.hash:
            by_nonce[ident] = so
    return sorted(by_nonce.values(), key=lambda s: s.hash)


__all__ = [
    "BUY", "SELL", "Order", "SignedOrder", "OrderError", "OrderFilter", "make_order", "sign_order",
    "decode_order", "encode_body", "gate_closure", "dedupe", "check_terms",
]
