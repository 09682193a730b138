"""The signed CBOR channel messages: round trip, tamper and fuzz."""

from __future__ import annotations

import cbor2
import pytest
from bitcoinx import PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from microgrid.coordinator.channels.messages import SCHEMA, MessageError, decode, digest, encode

KEY = PrivateKey.from_random()
OTHER = PrivateKey.from_random()

values = {int: st.integers(0, 2 ** 63 - 1), bytes: st.binary(max_size=64), str: st.text(max_size=40)}


@st.composite
def messages(draw):
    kind = draw(st.sampled_from(sorted(SCHEMA)))
    body = {name: draw(values[t]) for name, t in SCHEMA[kind].items()}
    cid = draw(st.binary(min_size=16, max_size=16))
    reply_to = draw(st.sampled_from([b"", bytes(16)]))
    return kind, cid, body, reply_to


@settings(max_examples=150, deadline=None)
@given(messages())
def test_round_trip(m) -> None:
    kind, cid, body, reply_to = m
    msg = encode(KEY, kind, cid, body, reply_to)
    back = decode(msg.wire)
    assert (back.type, back.channel_id, back.body, back.reply_to) == (kind, cid, body, reply_to)
    assert back.sender == KEY.public_key.to_bytes() and back.digest == digest(msg.wire)


@settings(max_examples=150, deadline=None)
@given(messages(), st.data())
def test_any_flipped_bit_is_refused(m, data) -> None:
    wire = bytearray(encode(KEY, *m[:3], m[3]).wire)
    i = data.draw(st.integers(0, len(wire) - 1))
    wire[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(MessageError):
        decode(bytes(wire))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_message_errors(raw) -> None:
    with pytest.raises(MessageError):
        decode(raw)


def test_signature_by_another_key_is_refused() -> None:
    msg = encode(KEY, "pay-ack", bytes(16), {"seq": 1, "amount": 2})
    signed, _ = cbor2.loads(msg.wire)
    forged = cbor2.dumps([signed, OTHER.sign(signed)])
    with pytest.raises(MessageError, match="signature"):
        decode(forged)


def test_schema_violations_are_refused() -> None:
    with pytest.raises(MessageError, match="unknown fields"):
        encode(KEY, "pay-ack", bytes(16), {"seq": 1, "amount": 2, "extra": 1})
    with pytest.raises(MessageError, match="lacks"):
        encode(KEY, "pay-ack", bytes(16), {"seq": 1})
    with pytest.raises(MessageError, match="integer"):
        encode(KEY, "pay-ack", bytes(16), {"seq": True, "amount": 2})
    with pytest.raises(MessageError, match="type"):
        encode(KEY, "teleport", bytes(16), {})
