"""Record signing and the reader's filter: nothing unsigned, forged,
tampered, copied, expired, oversized or superseded gets through."""

from __future__ import annotations

import pytest
from bitcoinx import PrivateKey
from hypothesis import given, settings, strategies as st

from microgrid.coordinator.overlay import records
from microgrid.coordinator.overlay.records import RecordError
from microgrid.shared import cbor, cose, secp256k1

ALICE = PrivateKey.from_int(0xA11CE)
MALLORY = PrivateKey.from_int(0xBAD)
NOW = 1_750_000_000


def signed(key: PrivateKey = ALICE, k: str = "dir/zone-1", body: bytes = b"hello", seq: int = 1,
           issued: int = NOW, ttl: int = 600, slot: str = "") -> bytes:
    return records.sign(key, k, body, seq, issued, ttl, slot)


def test_signed_record_verifies_and_carries_what_was_published() -> None:
    rec = records.verify(signed(), "dir/zone-1", NOW + 1)
    assert rec.body == b"hello" and rec.key == "dir/zone-1" and rec.seq == 1
    assert rec.publisher == ALICE.public_key.to_bytes(compressed=True)
    assert rec.expires == NOW + 600 and rec.namespace == "dir"
    assert len(rec.publisher_id) == 16


def test_tampered_body_is_refused() -> None:
    raw = bytearray(signed(body=b"pay alice 1"))
    i = bytes(raw).index(b"pay alice 1")
    raw[i + 4] = ord("m")
    with pytest.raises(RecordError, match="does not verify"):
        records.verify(bytes(raw), "dir/zone-1", NOW)


def test_record_claiming_another_publisher_is_refused() -> None:
    # Mallory signs a payload that names Alice as publisher.
    alice_pub = ALICE.public_key.to_bytes(compressed=True)
    payload = records.encode_payload("dir/zone-1", "", 5, NOW, NOW + 60, alice_pub, b"evil")
    protected = cose.encode_protected(records.ALG_ES256K, records.key_id(alice_pub))
    der = MALLORY.sign(bytes(cose.sig_structure(protected, payload)), hasher=records._sha256)
    from bitcoinx import der_signature_to_compact
    raw = bytes(cose.build(protected, payload, der_signature_to_compact(der)))
    with pytest.raises(RecordError, match="does not verify"):
        records.verify(raw, "dir/zone-1", NOW)


def test_record_copied_under_another_key_is_refused() -> None:
    with pytest.raises(RecordError, match="copied"):
        records.verify(signed(k="dir/zone-1"), "dir/zone-2", NOW)


def test_expired_record_is_refused_at_its_own_expiry_second() -> None:
    raw = signed(ttl=60)
    records.verify(raw, "dir/zone-1", NOW + 59)
    with pytest.raises(RecordError, match="expired"):
        records.verify(raw, "dir/zone-1", NOW + 60)


def test_record_from_the_far_future_is_refused() -> None:
    with pytest.raises(RecordError, match="issued"):
        records.verify(signed(issued=NOW + 3600), "dir/zone-1", NOW)


def test_oversized_record_is_refused_unread_and_oversized_body_not_published() -> None:
    with pytest.raises(RecordError, match="larger than"):
        records.verify(b"\x00" * (records.MAX_RECORD_BYTES + 1), "dir/zone-1", NOW)
    with pytest.raises(RecordError, match="at most"):
        signed(body=b"x" * (records.MAX_BODY_BYTES + 1))


@pytest.mark.parametrize("ttl", [0, -5, records.MAX_TTL_S + 1, True, 1.5])
def test_publishing_with_a_bad_lifetime_is_refused(ttl: object) -> None:
    with pytest.raises(RecordError, match="ttl_s"):
        signed(ttl=ttl)  # type: ignore[arg-type]


def test_high_s_twin_of_a_valid_signature_is_refused() -> None:
    msg = cose.parse(signed())
    s = int.from_bytes(msg.signature[32:], "big")
    twin = msg.signature[:32] + (secp256k1.N - s).to_bytes(32, "big")
    raw = bytes(cose.build(msg.protected, msg.payload, twin))
    with pytest.raises(RecordError, match="high S"):
        records.verify(raw, "dir/zone-1", NOW)


def test_unsigned_and_malformed_values_are_refused() -> None:
    for raw in (b"", b"hello", bytes(cbor.dumps({1: 2})), bytes(cbor.dumps([b"", {}, b"", b""]))):
        with pytest.raises(RecordError):
            records.verify(raw, "dir/zone-1", NOW)


def test_reader_keeps_newest_per_publisher_and_slot() -> None:
    old, new = signed(seq=1, body=b"v1"), signed(seq=2, body=b"v2")
    other_slot = signed(seq=1, body=b"order-2", slot="o2")
    mallory = signed(MALLORY, seq=1, body=b"m")
    got = records.select([new, old, other_slot, mallory, b"junk", new], "dir/zone-1", NOW)
    bodies = sorted(r.body for r in got)
    assert bodies == [b"m", b"order-2", b"v2"]


def test_publisher_flooding_a_key_is_ignored_entirely() -> None:
    flood = [signed(MALLORY, seq=i, slot=f"s{i}") for i in range(records.MAX_SLOTS_PER_PUBLISHER + 1)]
    reasons: list[str] = []
    got = records.select(flood + [signed()], "dir/zone-1", NOW, on_reject=reasons.append)
    assert [r.publisher for r in got] == [ALICE.public_key.to_bytes(compressed=True)]
    assert any("all ignored" in r for r in reasons)


def test_allow_list_drops_records_of_unknown_publishers() -> None:
    alice = ALICE.public_key.to_bytes(compressed=True)
    got = records.select([signed(), signed(MALLORY)], "dir/zone-1", NOW, accept=lambda r: r.publisher == alice)
    assert [r.publisher for r in got] == [alice]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_verify_and_never_crash(data: bytes) -> None:
    with pytest.raises(RecordError):
        records.verify(data, "dir/zone-1", NOW)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=148), st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_is_refused(pos: int, flip: int) -> None:
    raw = bytearray(signed())
    raw[pos % len(raw)] ^= flip
    try:
        rec = records.verify(bytes(raw), "dir/zone-1", NOW)
    except RecordError:
        return
    # Only a change that leaves the signed content intact may pass (e.g. the
    # CBOR tag byte); what it carries must then be unchanged.
    assert rec.body == b"hello" and rec.seq == 1
