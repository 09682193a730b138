"""Membership records and the roster: every forgery and replay of issue 14
refused or without effect."""

from __future__ import annotations

import pytest
from bitcoinx import PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microgrid.coordinator.membership import records as R
from microgrid.coordinator.membership.roster import MAX_CLOCK_SKEW_S, Roster
from microgrid.shared import cbor

from .helpers import DAY, T0, pub, zone


def test_zone_id_is_the_hash_of_the_founding_record_and_round_trips() -> None:
    z = zone()
    again = R.parse_zone(z.zone.encode())
    assert again == z.zone and again.id == z.zone.id
    other = R.found(z.name, [pub(a) for a in z.admins], 3, z.zone.founded)
    assert other.id != z.zone.id  # changing k changes the zone id


@pytest.mark.parametrize("k", [0, 4, -1, True])
def test_threshold_out_of_range_refused(k: int) -> None:
    z = zone()
    with pytest.raises(R.MembershipError, match="threshold"):
        R.found("elm", [pub(a) for a in z.admins], k, T0)


def test_duplicate_admin_keys_refused() -> None:
    a = PrivateKey.from_random()
    with pytest.raises(R.MembershipError, match="distinct"):
        R.found("elm", [pub(a), pub(a)], 1, T0)


def test_admitted_member_is_listed_with_its_connection_point() -> None:
    z = zone()
    m = pub(PrivateKey.from_random())
    roster = Roster(z.zone)
    assert roster.offer(z.admit(m, point="EAN-871", feeder="F2"), T0) == "new"
    got = roster.members(T0 + 10)[m]
    assert (got.connection, got.feeder) == ("EAN-871", "F2")
    assert set(got.signers) <= set(z.zone.admins) and len(got.signers) == 2


def test_fewer_than_k_signatures_refused() -> None:
    z = zone(3, 2)
    m = pub(PrivateKey.from_random())
    roster = Roster(z.zone)
    for n in (0, 1):
        with pytest.raises(R.MembershipError, match="needs 2 of 3"):
            roster.offer(z.admit(m, signers=n), T0)
    assert not roster.is_member(m, T0)


def test_signed_by_non_admins_refused_even_k_of_them() -> None:
    z = zone(3, 2)
    m = pub(PrivateKey.from_random())
    strangers = [PrivateKey.from_random() for _ in range(3)]
    raw = R.signed(R.admission(z.zone, m, "EAN-1", "F", T0, T0 + DAY), *strangers)
    with pytest.raises(R.MembershipError, match="not an admin"):
        Roster(z.zone).offer(raw, T0)
    # Nor does padding k admin signatures with a stranger's help.
    raw = R.signed(R.admission(z.zone, m, "EAN-1", "F", T0, T0 + DAY), z.admins[0], strangers[0])
    with pytest.raises(R.MembershipError, match="not an admin"):
        Roster(z.zone).offer(raw, T0)


def test_one_admin_signing_twice_counts_once() -> None:
    z = zone(3, 2)
    m = pub(PrivateKey.from_random())
    raw = R.signed(R.admission(z.zone, m, "EAN-1", "F", T0, T0 + DAY), z.admins[0])
    with pytest.raises(R.MembershipError, match="already signed"):
        R.add_signature(raw, z.admins[0])
    # Forged by copying the same signature in twice.
    payload, sigs = R._open(raw)
    twice = R.envelope(payload, [(p, s) for p, _h, s in sigs] * 2)
    with pytest.raises(R.MembershipError, match="signed twice"):
        R.verify(twice, z.zone)


def test_tampered_payload_or_signature_refused() -> None:
    z = zone()
    m = pub(PrivateKey.from_random())
    raw = z.admit(m)
    payload, sigs = R._open(raw)
    r = R.parse_payload(payload)
    longer = R.encode_payload(R.Record(r.type, r.zone, r.issued, r.member, r.expires + DAY, r.connection, r.feeder))
    with pytest.raises(R.MembershipError, match="does not verify"):
        R.verify(R.envelope(longer, [(p, s) for p, _h, s in sigs]), z.zone)
    p0, _h, s0 = sigs[0]
    flipped = s0[:10] + bytes([s0[10] ^ 1]) + s0[11:]
    with pytest.raises(R.MembershipError):
        R.verify(R.envelope(payload, [(p0, flipped)] + [(p, s) for p, _h, s in sigs[1:]]), z.zone)


def test_record_for_another_zone_refused() -> None:
    z = zone()
    # Same admins, another name: another zone id; a record there is no good here.
    other = R.found("oak-lane", [pub(a) for a in z.admins], z.k, z.zone.founded)
    m = pub(PrivateKey.from_random())
    raw = R.signed(R.admission(other, m, "EAN-1", "F", T0, T0 + DAY), *z.admins)
    with pytest.raises(R.MembershipError, match="not ours"):
        Roster(z.zone).offer(raw, T0)


def test_expired_admission_is_not_a_member() -> None:
    z = zone()
    m = pub(PrivateKey.from_random())
    roster = Roster(z.zone)
    roster.offer(z.admit(m, days=30), T0)
    assert roster.is_member(m, T0 + 29 * DAY)
    assert not roster.is_member(m, T0 + 30 * DAY)
    assert roster.status(m, T0 + 30 * DAY) == "expired"


def test_revocation_beats_older_admission_whatever_the_arrival_order() -> None:
    z = zone()
    m = pub(PrivateKey.from_random())
    admit, revoke = z.admit(m, issued=T0), z.revoke(m, issued=T0 + DAY)
    for order in ([admit, revoke], [revoke, admit]):
        roster = Roster(z.zone)
        for raw in order:
            roster.offer(raw, T0 + 2 * DAY)
        assert not roster.is_member(m, T0 + 2 * DAY)
        assert roster.status(m, T0 + 2 * DAY) == "revoked"


def test_replayed_admission_after_revocation_has_no_effect_but_a_newer_renewal_does() -> None:
    z = zone()
    m = pub(PrivateKey.from_random())
    roster = Roster(z.zone)
    old = z.admit(m, issued=T0)
    roster.offer(old, T0)
    roster.offer(z.revoke(m, issued=T0 + DAY), T0 + DAY)
    # The member replays its old admission, and one issued before the revocation.
    assert roster.offer(old, T0 + 2 * DAY) == "stale"
    assert roster.offer(z.admit(m, issued=T0 + DAY - 1), T0 + 2 * DAY) == "stale"
    assert roster.offer(z.admit(m, issued=T0 + DAY), T0 + 2 * DAY) == "stale"  # same second: revocation wins
    assert not roster.is_member(m, T0 + 2 * DAY)
    assert roster.offer(z.admit(m, issued=T0 + 2 * DAY), T0 + 2 * DAY) == "new"
    assert roster.is_member(m, T0 + 2 * DAY)


def test_renewal_extends_and_an_old_admission_does_not_shorten_it() -> None:
    z = zone()
    m = pub(PrivateKey.from_random())
    roster = Roster(z.zone)
    roster.offer(z.admit(m, issued=T0 + 20 * DAY, days=30), T0 + 20 * DAY)
    roster.offer(z.admit(m, issued=T0, days=30), T0 + 20 * DAY)  # older, arrives later
    assert roster.is_member(m, T0 + 40 * DAY)


def test_record_issued_in_the_future_refused_until_its_time() -> None:
    z = zone()
    m = pub(PrivateKey.from_random())
    roster = Roster(z.zone)
    revoke_forever = z.revoke(m, issued=T0 + 100 * 365 * DAY)
    with pytest.raises(R.MembershipError, match="after now"):
        roster.offer(revoke_forever, T0)
    assert roster.offer(z.admit(m, issued=T0 + MAX_CLOCK_SKEW_S), T0) == "new"  # within the skew


def test_new_key_on_the_same_connection_point_replaces_the_old() -> None:
    z = zone()
    old, new = pub(PrivateKey.from_random()), pub(PrivateKey.from_random())
    roster = Roster(z.zone)
    roster.offer(z.admit(new, issued=T0 + DAY, point="EAN-7"), T0 + DAY)
    roster.offer(z.admit(old, issued=T0, point="EAN-7"), T0 + DAY)
    assert set(roster.members(T0 + DAY)) == {new}
    assert roster.status(old, T0 + DAY) == "replaced"


def test_admission_longer_than_the_limit_refused() -> None:
    z = zone()
    m = pub(PrivateKey.from_random())
    with pytest.raises(R.MembershipError, match="within"):
        R.admission(z.zone, m, "EAN", "F", T0, T0 + R.MAX_ADMISSION_S + 1)


def test_non_canonical_payload_refused() -> None:
    z = zone()
    m = pub(PrivateKey.from_random())
    payload = R.admission(z.zone, m, "EAN", "F", T0, T0 + DAY).payload()
    # issued (label 4) as an 8-byte integer instead of the shortest form: same value.
    m_ = cbor.loads(payload)
    longer = bytearray(payload)
    i = longer.find(bytes([0x04, 0x1A]) + T0.to_bytes(4, "big"))
    assert i >= 0 and m_[4] == T0
    longer[i + 1:i + 6] = bytes([0x1B]) + T0.to_bytes(8, "big")
    raw = R.envelope(bytes(longer))
    for a in z.admins[:2]:
        raw = _sign_anyway(raw, a)
    with pytest.raises(R.MembershipError, match="canonical"):
        R.verify(raw, z.zone)


def _sign_anyway(raw: bytes, secret: PrivateKey) -> bytes:
    """add_signature without its checks: what a forger can build."""
    from bitcoinx import der_signature_to_compact

    from microgrid.shared import cose
    from microgrid.shared.reading import ALG_ES256K, key_id

    payload, sigs = R._open(raw)
    protected = bytes(cose.encode_protected(ALG_ES256K, key_id(pub(secret))))
    sig = der_signature_to_compact(secret.sign(R._sig_structure(protected, payload), hasher=R._sha256))
    return R.envelope(payload, [(p, s) for p, _h, s in sigs] + [(protected, sig)])


# -- hypothesis: the codec and parsers ----------------------------------------------

_Z = zone()
_M = pub(PrivateKey.from_random())
texts = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=16)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(issued=st.integers(0, 2**39), life=st.integers(1, R.MAX_ADMISSION_S), point=texts, feeder=texts)
def test_admission_round_trips(issued: int, life: int, point: str, feeder: str) -> None:
    r = R.admission(_Z.zone, _M, point, feeder, issued, issued + life)
    raw = R.signed(r, *_Z.admins[:2])
    got = R.verify(raw, _Z.zone)
    assert (got.type, got.issued, got.expires, got.connection, got.feeder, got.member) == \
        ("admit", issued, issued + life, point, feeder, _M)
    assert R.parse(raw).payload() == r.payload()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_the_parsers(data: bytes) -> None:
    for fn in (lambda: R.verify(data, _Z.zone), lambda: R.parse_zone(data), lambda: R.parse(data)):
        try:
            fn()
        except R.MembershipError:
            pass


_RAW = R.signed(R.admission(_Z.zone, _M, "EAN-1", "F", T0, T0 + DAY), *_Z.admins[:2])


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, len(_RAW) - 1), bit=st.integers(0, 7))
def test_any_bit_flip_is_refused(pos: int, bit: int) -> None:
    bad = bytearray(_RAW)
    bad[pos] ^= 1 << bit
    with pytest.raises(R.MembershipError):
        R.verify(bytes(bad), _Z.zone)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**64, 2**64 - 1) | st.binary(max_size=40)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.integers(0, 20), inner, max_size=8),
                    max_leaves=20))
def test_any_cbor_payload_is_parsed_or_refused_cleanly(obj: object) -> None:
    try:
        payload = cbor.dumps(obj)
    except cbor.CBORError:
        return
    for raw in (R.envelope(payload), bytes(cbor.dumps(cbor.Tag(98, obj)))):
        try:
            R.verify(raw, _Z.zone)
        except R.MembershipError:
            pass
        else:
            raise AssertionError("an unsigned record verified")


# -- hypothesis: the roster's answer does not depend on arrival order ---------------

_MEMBERS = [pub(PrivateKey.from_random()) for _ in range(3)]
_POOL = ([_Z.admit(m, issued=T0 + t * 3600, days=d) for m in _MEMBERS for t in (0, 1, 2) for d in (1, 30)]
         + [_Z.revoke(m, issued=T0 + t * 3600) for m in _MEMBERS for t in (1, 2)]
         + [_Z.admit(_MEMBERS[0], issued=T0 + 5, point=f"EAN-{_MEMBERS[1].hex()[2:14]}")])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_POOL), max_size=25), st.randoms(use_true_random=False),
       st.integers(0, 40 * 24))
def test_roster_is_the_same_whatever_the_arrival_order(picked: list[bytes], rnd: object, hours: int) -> None:
    now = T0 + hours * 3600
    shuffled = list(picked)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    answers = []
    for order in (picked, shuffled, picked[::-1]):
        roster = Roster(_Z.zone)
        for raw in order:
            roster.offer(raw, T0 + 3 * 3600)
        answers.append((roster.members(now), {m: roster.status(m, now) for m in _MEMBERS}))
    assert answers[0] == answers[1] == answers[2]
    # And a revocation newer than every admission of its member always wins.
    for m in _MEMBERS:
        revs = [R.parse(r).issued for r in picked if R.parse(r).type == "revoke" and R.parse(r).member == m]
        adms = [R.parse(r).issued for r in picked if R.parse(r).type == "admit" and R.parse(r).member == m]
        if revs and (not adms or max(revs) >= max(adms)):
            assert m not in answers[0][0]
