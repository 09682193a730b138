"""The CBOR codec in shared/ agrees with cbor2 and refuses bad input."""

from __future__ import annotations

import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgrid.shared import cbor

keys = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=8))
values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**64), 2**64 - 1),
        st.binary(max_size=40),
        st.text(max_size=20),
        st.floats(allow_nan=False),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=20,
)


@given(values)
def test_roundtrip_matches_cbor2(value: object) -> None:
    encoded = cbor.dumps(value)
    assert cbor.loads(encoded) == value
    assert cbor2.loads(encoded) == value


@given(values)
def test_decoding_then_encoding_reproduces_the_same_bytes(value: object) -> None:
    # What the coordinator decodes re-encodes to what the meter sent.
    assert cbor.dumps(value) == cbor.dumps(cbor.loads(cbor.dumps(value)))


@given(st.dictionaries(st.integers(-1000, 1000), st.integers(-(2**64), 2**64 - 1), max_size=8))
def test_maps_sort_keys_like_rfc8949_core_deterministic(value: dict) -> None:
    # RFC 8949 section 4.2.1: pairs ordered by the bytes of the encoded key
    # (cbor2's canonical mode uses the older length-first order instead).
    encoded = cbor.dumps(value)
    pairs = sorted((cbor2.dumps(k), cbor2.dumps(v)) for k, v in value.items())
    head_len = len(cbor2.dumps([0] * len(value))) - len(value)
    assert encoded[head_len:] == b"".join(k + v for k, v in pairs)
    assert cbor2.loads(encoded) == value


@given(st.binary(max_size=64))
@settings(max_examples=500)
def test_random_bytes_decode_or_raise_cbor_error(data: bytes) -> None:
    try:
        cbor.loads(data)
    except cbor.CBORError:
        pass


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "truncated"),
        (b"\x82\x01", "array of 2 items in 1 bytes"),
        (b"\x19\x01", "truncated"),
        (b"\x01\x02", "trailing"),
        (b"\x9f\x01\xff", "indefinite"),
        (b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00", "array of"),
        (b"\xa2\x01\x02\x01\x03", "duplicate map key"),
        (b"\x62\xff\xfe", "UTF-8"),
        (b"\x81" * 40 + b"\x01", "nesting"),
        (b"\x1c", "reserved"),
    ],
)
def test_malformed_input_is_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(cbor.CBORError, match=why):
        cbor.loads(data)


def test_half_floats_from_other_encoders_decode() -> None:
    for v in (0.0, 1.5, -2.0, 65504.0, float("inf")):
        assert cbor.loads(cbor2.dumps(v, canonical=True)) == v


def test_integers_beyond_64_bits_are_refused() -> None:
    with pytest.raises(cbor.CBORError, match="out of CBOR range"):
        cbor.dumps(2**64)


def test_a_float32_decodes_exactly_by_default_and_as_its_decimal_when_asked() -> None:
    # 994.3 as a single-precision meter holds it: 994.29998779296875.
    raw = b"\xfa" + struct.pack(">f", 994.3)
    assert cbor.loads(raw) == 994.2999877929688
    assert cbor.loads(raw, f32_decimal=True) == 994.3
    # Doubles on the wire are what the sender had, asked or not.
    assert cbor.loads(cbor.dumps(994.3), f32_decimal=True) == 994.3
    assert cbor.loads(cbor.dumps([230.1, {1: 4.321}]), f32_decimal=True) == [230.1, {1: 4.321}]
    for special in (float("inf"), float("-inf")):
        assert cbor.loads(b"\xfa" + struct.pack(">f", special), f32_decimal=True) == special
    nan = cbor.loads(b"\xfa" + struct.pack(">f", float("nan")), f32_decimal=True)
    assert nan != nan


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
@settings(max_examples=2000)
def test_the_decimal_of_a_float32_is_the_same_float32_in_at_most_9_digits(x: float) -> None:
    raw = struct.pack(">f", x)
    d = cbor.float32_as_decimal(raw)
    assert struct.pack(">f", d) == raw
    # Shortest: one significant digit fewer would not be the same float32.
    digits = len(repr(d).split("e")[0].replace("-", "").replace(".", "").strip("0")) or 1
    if digits > 1:
        shorter = float("%.*g" % (digits - 1, d))
        assert struct.pack(">f", shorter) != raw
