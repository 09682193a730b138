"""The messages coordinators exchange about channels: CBOR, signed by the
sender's coordinator key (secp256k1, bitcoinx).

Wire form: CBOR array `[signed, signature]` where `signed` is the
canonical CBOR encoding of

    [1, type, channel_id, sender_key, body, reply_to]

- `type`: one of TYPES below; `channel_id`: 16 bytes;
- `sender_key`: the sender's 33-byte compressed coordinator public key;
- `body`: a map whose fields and their types are fixed per type (SCHEMA);
- `reply_to`: for a response, the first 16 bytes of SHA-256 of the request's
  wire bytes (binds an answer to its question, so an old answer cannot be
  replayed as a new one); empty for a request.

`signature` is a DER ECDSA signature over SHA-256(`signed`) by
`sender_key`. `decode` checks the structure, the schema and the signature;
whether the sender may talk about this channel is the node's business.

Requests and their answers (payer -> payee unless noted):

    open            -> accept            the payer's terms / the payee's key
    refund-request  -> refund-signature  unsigned refund / payee's signature
    funded          -> funded-ack        the broadcast funding transaction
    pay             -> pay-ack           one update (seq, cumulative amount, sig)
    close           -> closed            payer asks the payee to close
    closed          -> closed-ack        payee tells the payer it closed
    any             -> error             code + detail; nothing changed
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import cbor2
from bitcoinx import PrivateKey, PublicKey

VERSION = 1
MAX_MESSAGE = 16_384

SCHEMA: dict[str, dict[str, type]] = {
    "open": {"capacity": int, "fee": int, "refund_locktime": int, "payer_key": bytes, "payer_script": bytes,
             "uri": str},
    "accept": {"payee_key": bytes, "payee_script": bytes},
    "refund-request": {"funding_txid": bytes, "funding_vout": int, "refund": bytes},
    "refund-signature": {"sig": bytes},
    "funded": {"funding_tx": bytes},
    "funded-ack": {},
    "pay": {"seq": int, "amount": int, "sig": bytes},
    "pay-ack": {"seq": int, "amount": int},
    "close": {},
    "closed": {"closing_tx": bytes},
    "closed-ack": {},
    "error": {"code": str, "detail": str},
}
TYPES = tuple(SCHEMA)
REPLIES = {"open": "accept", "refund-request": "refund-signature", "funded": "funded-ack", "pay": "pay-ack",
           "close": "closed", "closed": "closed-ack"}


class MessageError(Exception):
    """A message that cannot be decoded, breaks the schema or is not
    authentic. `code` is "malformed" or "auth"."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True)
class Message:
    type: str
    channel_id: bytes
    sender: bytes
    body: dict[str, Any] = field(default_factory=dict)
    reply_to: bytes = b""
    wire: bytes = b""  # as received or sent

    @property
    def digest(self) -> bytes:
        return digest(self.wire)


def digest(wire: bytes) -> bytes:
    return hashlib.sha256(wire).digest()[:16]


def _check_body(kind: str, body: Any) -> dict[str, Any]:
    schema = SCHEMA[kind]
    if not isinstance(body, dict):
        raise MessageError("malformed", f"{kind} body is {type(body).__name__}: expected a map")
    extra = set(body) - set(schema)
    if extra:
        raise MessageError("malformed", f"{kind} body has unknown fields {sorted(map(str, extra))}")
    for name, want in schema.items():
        if name not in body:
            if name == "uri":
                continue
            raise MessageError("malformed", f"{kind} body lacks {name!r}")
        v = body[name]
        if want is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise MessageError("malformed", f"{kind}.{name}={v!r}: expected an integer")
        if want is int and not 0 <= v < 2 ** 63:
            raise MessageError("malformed", f"{kind}.{name}={v}: expected 0..2^63-1")
        if want is not int and not isinstance(v, want):
            raise MessageError("malformed", f"{kind}.{name} is {type(v).__name__}: expected {want.__name__}")
    return body


def encode(key: PrivateKey, kind: str, channel_id: bytes, body: dict[str, Any], reply_to: bytes = b"") -> Message:
    """Build and sign a message; `.wire` holds the bytes to send."""
    if kind not in SCHEMA:
        raise MessageError("malformed", f"message type {kind!r}: expected one of {', '.join(TYPES)}")
    _check_body(kind, body)
    sender = key.public_key.to_bytes(compressed=True)
    signed = cbor2.dumps([VERSION, kind, channel_id, sender, body, reply_to], canonical=True)
    sig = key.sign(signed)
    wire = cbor2.dumps([signed, sig])
    return Message(kind, channel_id, sender, body, reply_to, wire)


def decode(wire: bytes) -> Message:
    """Parse and authenticate a message; raises MessageError."""
    if len(wire) > MAX_MESSAGE:
        raise MessageError("malformed", f"message of {len(wire)} bytes: expected at most {MAX_MESSAGE}")
    try:
        outer = cbor2.loads(wire)
        if not (isinstance(outer, list) and len(outer) == 2 and isinstance(outer[0], bytes)
                and isinstance(outer[1], bytes)):
            raise ValueError("expected [signed bytes, signature bytes]")
        signed, sig = outer
        inner = cbor2.loads(signed)
        if not (isinstance(inner, list) and len(inner) == 6):
            raise ValueError("expected [version, type, channel_id, sender, body, reply_to]")
        version, kind, channel_id, sender, body, reply_to = inner
    except MessageError:
        raise
    except Exception as e:  # cbor2 raises several types on bad input
        raise MessageError("malformed", f"undecodable message: {e}") from None
    if version != VERSION:
        raise MessageError("malformed", f"message version {version!r}: expected {VERSION}")
    if kind not in SCHEMA:
        raise MessageError("malformed", f"message type {kind!r}: expected one of {', '.join(TYPES)}")
    if not isinstance(channel_id, bytes) or len(channel_id) != 16:
        raise MessageError("malformed", f"channel id {channel_id!r}: expected 16 bytes")
    if not isinstance(reply_to, bytes) or len(reply_to) not in (0, 16):
        raise MessageError("malformed", f"reply_to {reply_to!r}: expected 0 or 16 bytes")
    if not isinstance(sender, bytes) or len(sender) != 33:
        raise MessageError("malformed", f"sender key {sender!r}: expected 33 bytes")
    _check_body(kind, body)
    if cbor2.dumps(inner, canonical=True) != signed:
        raise MessageError("malformed", "signed part is not canonical CBOR")
    try:
        ok = PublicKey.from_bytes(sender).verify_der_signature(sig, signed)
    except Exception:  # bitcoinx raises InvalidSignature, ValueError... on malformed keys/DER
        ok = False
    if not ok:
        raise MessageError("auth", f"signature does not verify for sender {sender.hex()}")
    return Message(kind, channel_id, sender, body, reply_to, wire)
