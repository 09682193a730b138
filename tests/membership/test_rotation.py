"""Admin key rotation: a new admin set signed by k of the set in force.
Records count if k admins of the set in force at their issue time signed
them; the chain is the same on every coordinator whatever the arrival
order; a self-appointed or under-signed set is refused."""

from __future__ import annotations

import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.membership import records as R
from microgrid.coordinator.membership.roster import Roster

from .helpers import DAY, T0, Zone, pub, zone

ROT = T0 + 10 * DAY
NOW = ROT + DAY


def _setup() -> tuple[Zone, list[PrivateKey], bytes]:
    z = zone(3, 2)
    new = [PrivateKey.from_random() for _ in range(3)]
    rot = R.signed(R.rotation(z.zone, 1, [pub(a) for a in new], 2, ROT), *z.admins[:2])
    return z, new, rot


def _admit(z: Zone, signers: list[PrivateKey], member: bytes, issued: int) -> bytes:
    return R.signed(R.admission(z.zone, member, f"EAN-{member.hex()[:8]}", "F", issued, issued + 365 * DAY),
                    *signers)


def test_after_a_rotation_the_new_admins_sign_and_the_old_no_longer_do() -> None:
    z, new, rot = _setup()
    roster = Roster(z.zone)
    assert roster.offer(rot, NOW) == "new" and roster.admins.admins == tuple(sorted(pub(a) for a in new))
    a, b, c = (pub(PrivateKey.from_random()) for _ in range(3))
    # Signed before the rotation by the old admins: still good, even arriving after it.
    assert roster.offer(_admit(z, z.admins[:2], a, ROT - DAY), NOW) == "new"
    # Issued after it: the old admins' signatures no longer count; the new ones' do.
    with pytest.raises(R.MembershipError, match="not an admin"):
        roster.offer(_admit(z, z.admins[:2], b, ROT + 1), NOW)
    assert roster.offer(_admit(z, new[:2], c, ROT + 1), NOW) == "new"
    assert set(roster.members(NOW)) == {a, c}
    # Revocations too: only the new set can revoke now.
    with pytest.raises(R.MembershipError):
        roster.offer(R.signed(R.revocation(z.zone, c, NOW - 10), *z.admins[:2]), NOW)
    assert roster.offer(R.signed(R.revocation(z.zone, c, NOW - 10), *new[1:]), NOW) == "new"
    assert set(roster.members(NOW)) == {a}


def test_a_record_taken_before_the_rotation_was_known_is_judged_again() -> None:
    z, new, rot = _setup()
    roster = Roster(z.zone)
    late = pub(PrivateKey.from_random())
    # Old admins sign after they were replaced; a coordinator not yet aware takes it...
    assert roster.offer(_admit(z, z.admins[:2], late, ROT + 5), NOW) == "new"
    assert roster.is_member(late, NOW)
    # ...until the rotation arrives: then it drops out.
    roster.offer(rot, NOW)
    assert not roster.is_member(late, NOW)


def test_self_appointed_or_under_signed_sets_are_refused() -> None:
    z = zone(3, 2)
    usurpers = [PrivateKey.from_random() for _ in range(2)]
    roster = Roster(z.zone)
    self_made = R.signed(R.rotation(z.zone, 1, [pub(u) for u in usurpers], 1, ROT), *usurpers)
    with pytest.raises(R.MembershipError, match="not an admin"):
        roster.offer(self_made, NOW)
    one = R.signed(R.rotation(z.zone, 1, [pub(u) for u in usurpers], 1, ROT), z.admins[0])
    with pytest.raises(R.MembershipError, match="needs 2 of 3"):
        roster.offer(one, NOW)
    with pytest.raises(R.MembershipError, match="threshold"):
        R.rotation(z.zone, 1, [pub(u) for u in usurpers], 3, ROT)
    assert len(roster.chain) == 1


def test_chain_is_the_same_whatever_the_arrival_order() -> None:
    z, new, rot1 = _setup()
    newer = [PrivateKey.from_random() for _ in range(2)]
    rot2 = R.signed(R.rotation(z.zone, 2, [pub(a) for a in newer], 1, ROT + DAY // 2), *new[:2])
    # A conflicting epoch 1 (two sets signed by the old admins): the earlier one stands.
    other = R.signed(R.rotation(z.zone, 1, [pub(PrivateKey.from_random())], 1, ROT + 60), *z.admins[1:])
    m = pub(PrivateKey.from_random())
    admit = _admit(z, newer[:1], m, ROT + DAY // 2 + 1)
    outcomes = set()
    for order in ([rot1, rot2, other, admit], [other, admit, rot2, rot1], [admit, rot2, other, rot1]):
        roster = Roster(z.zone)
        for _ in range(3):  # refreshes: what arrived too early is offered again
            for raw in order:
                try:
                    roster.offer(raw, NOW)
                except R.MembershipError:
                    pass
        outcomes.add((tuple(s.admins for s in roster.chain), tuple(roster.members(NOW))))
    assert len(outcomes) == 1
    chain, members = outcomes.pop()
    assert len(chain) == 3 and chain[2] == tuple(sorted(pub(a) for a in newer)) and members == (m,)


def test_rotations_survive_a_restart_through_raws() -> None:
    z, new, rot = _setup()
    roster = Roster(z.zone)
    roster.offer(rot, NOW)
    m = pub(PrivateKey.from_random())
    roster.offer(_admit(z, new[:2], m, ROT + 1), NOW)
    again = Roster(z.zone)
    for raw in roster.raws():
        again.offer(raw, NOW)
    assert again.chain == roster.chain and again.is_member(m, NOW)


def test_a_folder_read_in_any_order_follows_the_rotations() -> None:
    from microgrid.coordinator.membership.sync import offer_all

    z, new, rot1 = _setup()
    newer = [PrivateKey.from_random()]
    rot2 = R.signed(R.rotation(z.zone, 2, [pub(newer[0])], 1, ROT + 60), *new[:2])
    m = pub(PrivateKey.from_random())
    roster = Roster(z.zone)
    counts = offer_all(roster, [_admit(z, newer, m, ROT + 120), rot2, rot1], NOW, "a folder")
    assert counts == {"new": 3, "stale": 0, "refused": 0} and roster.is_member(m, NOW)
