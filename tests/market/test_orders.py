"""Orders: canonical signed encoding, verification, book admission."""

from __future__ import annotations

import logging

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgrid.coordinator.market import orders as om
from microgrid.coordinator.market.orders import (
    BUY, SELL, Order, OrderError, OrderFilter, decode_order, encode_body, make_order, sign_order,
)

from .helpers import CREATED, EXPIRES, KEYS, START, order


def test_signed_order_round_trips_and_hash_is_sha256_of_encoding() -> None:
    so = order(SELL, 1500, 120, who=1, nonce=7)
    back = decode_order(so.encoded)
    assert back == so
    import hashlib
    assert so.hash == hashlib.sha256(so.encoded).digest()
    assert back.order.owner == KEYS[1].public_key.to_bytes(compressed=True)


def test_signing_is_deterministic_so_the_same_terms_give_the_same_hash() -> None:
    assert order(BUY, 10, 5, nonce=1).hash == order(BUY, 10, 5, nonce=1).hash
    assert order(BUY, 10, 5, nonce=1).hash != order(BUY, 10, 5, nonce=2).hash


def test_tampered_terms_fail_the_signature() -> None:
    so = order(SELL, 1500, 120)
    outer = cbor2.loads(so.encoded)
    body = cbor2.loads(outer[1])
    body[om.L_LIMIT] = 1  # a relay lowers the seller's price
    outer[1] = cbor2.dumps(body, canonical=True)
    with pytest.raises(OrderError) as e:
        decode_order(cbor2.dumps(outer, canonical=True))
    assert e.value.reason == om.UNSIGNED


def test_signature_by_another_key_is_refused() -> None:
    so = order(SELL, 1500, 120, who=0)
    forged = sign_order(so.order, KEYS[0])  # fine
    assert decode_order(forged.encoded) == forged
    with pytest.raises(OrderError, match="expected the signing key"):
        sign_order(so.order, KEYS[1])
    outer = cbor2.loads(so.encoded)
    other = order(SELL, 1500, 120, who=1)
    outer[2] = other.signature
    with pytest.raises(OrderError) as e:
        decode_order(cbor2.dumps(outer, canonical=True))
    assert e.value.reason == om.UNSIGNED


@pytest.mark.parametrize("shape", ["body only", "no signature", "empty signature"])
def test_unsigned_orders_are_refused_as_unsigned(shape: str) -> None:
    so = order(BUY, 100, 50)
    body = encode_body(so.order)
    data = {"body only": cbor2.dumps(body), "no signature": cbor2.dumps([1, body], canonical=True),
            "empty signature": cbor2.dumps([1, body, b""], canonical=True)}[shape]
    with pytest.raises(OrderError) as e:
        decode_order(data)
    assert e.value.reason == om.UNSIGNED


def test_high_s_twin_of_a_signature_is_refused_so_hashes_are_unique() -> None:
    so = order(BUY, 100, 50)
    r, s = so.signature[:32], int.from_bytes(so.signature[32:], "big")
    twin = r + (om._N - s).to_bytes(32, "big")  # valid ECDSA, different bytes
    outer = cbor2.loads(so.encoded)
    outer[2] = twin
    with pytest.raises(OrderError, match="high S"):
        decode_order(cbor2.dumps(outer, canonical=True))


def test_non_canonical_encoding_is_refused() -> None:
    so = order(BUY, 100, 50)
    # Same array, but the version as a 2-byte integer: valid CBOR, not canonical.
    data = b"\x83\x19\x00\x01" + so.encoded[2:]
    with pytest.raises(OrderError, match="non-canonical"):
        decode_order(data)


@pytest.mark.parametrize("field,value,match", [
    ("side", "lend", "side"),
    ("zone", "Zone A", "zone"),
    ("interval_s", 600, "interval_s"),
    ("interval_start", START + 1, "multiple"),
    ("quantity_wh", 0, "quantity_wh"),
    ("limit_sat_per_kwh", -1, "limit"),
    ("expires", CREATED, "expires"),
    ("nonce", 2**64, "nonce"),
    ("quantity_wh", True, "quantity_wh"),
])
def test_out_of_range_terms_are_refused_with_field_and_expectation(field: str, value: object, match: str) -> None:
    terms = dict(side=BUY, zone="zone-a", interval_start=START, quantity_wh=10, limit_sat_per_kwh=5,
                 expires=EXPIRES, owner=KEYS[0].public_key.to_bytes(compressed=True), nonce=1, created=CREATED)
    terms[field] = value
    with pytest.raises(OrderError, match=match) as e:
        sign_order(Order(**terms), KEYS[0])  # type: ignore[arg-type]
    assert e.value.reason == om.INVALID
    assert "expected" in str(e.value)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_garbage_is_refused_with_an_order_error_only(data: bytes) -> None:
    with pytest.raises(OrderError):
        decode_order(data)


@given(st.integers(0, 2), st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_single_byte_corruption_never_yields_a_different_valid_order(pos_seed: int, flip: int) -> None:
    so = order(SELL, 1234, 99, who=2, nonce=flip)
    for pos in range(pos_seed, len(so.encoded), 3):
        data = bytearray(so.encoded)
        data[pos] ^= 1 + flip % 255
        try:
            back = decode_order(bytes(data))
        except OrderError:
            continue
        raise AssertionError(f"corrupted byte {pos} decoded to {back}")


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(OrderError, match="bytes: expected"):
        decode_order(b"\x00" * 10_000)


# -- admission into a book ---------------------------------------------------


def make_filter(**kw: object) -> tuple[OrderFilter, list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    f = OrderFilter("zone-a", START, 900, gate_lead_s=300, on_reject=lambda r, d: seen.append((r, d)), **kw)  # type: ignore[arg-type]
    return f, seen


def test_valid_order_before_gate_closure_is_accepted() -> None:
    f, seen = make_filter()
    so = order(BUY, 100, 50)
    assert f.offer(so.encoded, now=START - 3600) == so
    assert f.orders() == [so] and not seen


def test_each_refusal_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    f, seen = make_filter()
    now = START - 3600
    good = order(BUY, 100, 50, nonce=1)
    cases = [
        (b"\xff\x00", om.INVALID),
        (cbor2.dumps([1, encode_body(good.order)], canonical=True), om.UNSIGNED),
        (order(BUY, 100, 50, nonce=2, expires=now).encoded, om.EXPIRED),
        (order(BUY, 100, 50, nonce=3, expires=START - 300).encoded, om.EXPIRED),  # dies at gate closure
        (order(BUY, 100, 50, nonce=4, created=START - 300).encoded, om.LATE),
        (order(BUY, 100, 50, nonce=5, zone="zone-b").encoded, om.WRONG_BOOK),
        (order(BUY, 100, 50, nonce=6, start=START + 900, expires=START + 1800).encoded, om.WRONG_BOOK),
    ]
    assert f.offer(good.encoded, now) is not None
    cases.append((good.encoded, om.DUPLICATE))
    with caplog.at_level(logging.INFO, logger="microgrid.market.orders"):
        for data, _ in cases:
            assert f.offer(data, now) is None
    assert [r for r, _ in seen] == [r for _, r in cases]
    assert len(caplog.records) == len(cases)
    assert all(r.getMessage().startswith("order ignored (") for r in caplog.records)
    assert f.orders() == [good]
    assert f.rejected[om.EXPIRED] == 2


def test_order_received_at_gate_closure_is_late() -> None:
    f, seen = make_filter()
    assert f.offer(order(BUY, 100, 50).encoded, now=START - 300) is None
    assert seen[0][0] == om.LATE
    assert f.offer(order(BUY, 100, 50).encoded, now=START - 301) is not None


def test_same_owner_and_nonce_keeps_the_lower_hash_whatever_the_arrival_order() -> None:
    a, b = order(BUY, 100, 50, nonce=9), order(BUY, 200, 50, nonce=9)
    low = min(a, b, key=lambda s: s.hash)
    for first, second in ((a, b), (b, a)):
        f, seen = make_filter()
        f.offer(first.encoded, START - 3600)
        f.offer(second.encoded, START - 3600)
        assert f.orders() == [low]
        assert [r for r, _ in seen] == [om.DUPLICATE]
    assert om.dedupe([a, b, a]) == om.dedupe([b, a]) == [low]


def test_filter_accepts_already_decoded_orders() -> None:
    f, _ = make_filter()
    so = make_order(KEYS[3], SELL, "zone-a", START, 5, 1, EXPIRES, 0, CREATED)
    assert f.offer(so, START - 1000) is so
    assert len(f) == 1


_values = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=8),
                    st.binary(max_size=40), st.lists(st.integers(), max_size=2))


@given(st.dictionaries(st.one_of(st.integers(-1, 12), st.text(max_size=2)), _values, max_size=12),
       st.binary(min_size=0, max_size=70))
@settings(max_examples=300, deadline=None)
def test_well_formed_cbor_with_wrong_fields_is_refused_with_an_order_error_only(body: dict, sig: bytes) -> None:
    data = cbor2.dumps([1, cbor2.dumps(body, canonical=True), sig], canonical=True)
    with pytest.raises(OrderError):
        decode_order(data)


_pool = [order(BUY, 100 + i, 50, who=i % 3, nonce=i % 4) for i in range(10)] + \
    [order(SELL, 7, 1, who=1, nonce=99), order(SELL, 7, 1, who=1, nonce=99, expires=EXPIRES + 1)]


@given(st.permutations(_pool + _pool[:4]))
@settings(max_examples=100, deadline=None)
def test_any_arrival_order_admits_the_same_book(arrivals: list) -> None:
    f = OrderFilter("zone-a", START, 900, gate_lead_s=300)
    for so in arrivals:
        f.offer(so.encoded, START - 1000)
    assert f.orders() == om.dedupe(_pool)
