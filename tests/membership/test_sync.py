"""Records through the overlay, the records folder and the cache: a
member's admission reaches the others, a revocation reaches them and is
kept alive by them, junk on the board is refused, a restart remembers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.config import ConfigError, from_dict
from microgrid.coordinator.membership import records as R
from microgrid.coordinator.membership.gate import board_key
from microgrid.coordinator.membership.install import found_and_admit
from microgrid.coordinator.membership.roster import Roster
from microgrid.coordinator.membership.sync import MembershipSync, publish
from microgrid.coordinator.overlay import MemoryNetwork, MemoryOverlay

from ..channels.conftest import FixedClock
from .helpers import DAY, T0, pub, zone


def test_admission_revocation_and_restart(tmp_path: Path) -> None:
    z = zone()
    clock = FixedClock(T0 + 10)
    a, b, admin_tool = PrivateKey.from_random(), PrivateKey.from_random(), PrivateKey.from_random()
    folder = tmp_path / "a-records"
    folder.mkdir()
    (folder / "admission.cose").write_bytes(z.admit(pub(a)))
    (folder / "junk.cose").write_bytes(b"not a record")

    async def main() -> None:
        net = MemoryNetwork(clock.now)
        oa, ob, ot = (MemoryOverlay(k, net) for k in (a, b, admin_tool))
        for o in (oa, ob, ot):
            await o.start()
        sa = MembershipSync(oa, Roster(z.zone), clock, pub(a), records_dir=folder, cache_path=tmp_path / "a.cbor")
        sb = MembershipSync(ob, Roster(z.zone), clock, pub(b), cache_path=tmp_path / "b.cbor")
        assert sa.load_local() == {"new": 1, "stale": 0, "refused": 1}
        sb.load_local()
        sb.start()
        assert await sa.republish() == 1  # its own admission, from the folder
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sb.roster.is_member(pub(a), clock.now())  # by listening
        # Junk and foreign records on the board change nothing.
        await ot.put(board_key(z.zone.id_hex), b"\xd8\x62junk", 3600, slot="x")
        await ot.put(board_key(z.zone.id_hex), R.signed(R.admission(z.zone, pub(b), "EAN", "F", T0, T0 + DAY),
                                                         z.admins[0]), 3600, slot="y")
        await sb.refresh()
        assert set(sb.roster.members(clock.now())) == {pub(a)}
        # Admins revoke a (published from the admins' tool node); b learns it and keeps it alive.
        clock.t += 3600
        assert await publish(ot, z.zone, z.revoke(pub(a), issued=int(clock.t) - 60))
        await sb.refresh()
        assert not sb.roster.is_member(pub(a), clock.now())
        assert await sb.republish() == 1  # the revocation: b has no admission of its own
        # a replays its admission: nothing changes for b.
        await oa.put(board_key(z.zone.id_hex), z.admit(pub(a)), 3600, slot="admit:again")
        await sb.refresh()
        assert sb.roster.status(pub(a), clock.now()) == "revoked"
        # Restart: the cache remembers the revocation with no overlay at all.
        again = MembershipSync(ob, Roster(z.zone), clock, pub(b), cache_path=tmp_path / "b.cbor")
        again.load_local()
        assert again.roster.status(pub(a), clock.now()) == "revoked"

    asyncio.run(main())


def test_publish_refuses_what_readers_would_refuse() -> None:
    z = zone()
    weak = R.signed(R.admission(z.zone, pub(PrivateKey.from_random()), "EAN", "F", T0, T0 + DAY), z.admins[0])

    async def main() -> None:
        o = MemoryOverlay(PrivateKey.from_random(), MemoryNetwork(lambda: T0))
        await o.start()
        with pytest.raises(R.MembershipError, match="needs 2"):
            await publish(o, z.zone, weak)

    asyncio.run(main())


def _zone_section(tmp_path: Path) -> dict:
    s = found_and_admit(tmp_path / "z", "elm-street", [], T0, T0 + DAY)
    return {"id": s.id, "name": s.name, "admins": s.admins, "threshold": s.threshold, "founded": s.founded}


def test_zone_config_is_validated(tmp_path: Path) -> None:
    good = _zone_section(tmp_path)
    assert from_dict({"zone": good}).zone.zone().id_hex == good["id"]
    for change, match in ((dict(threshold=3), "is not the id"), (dict(threshold=4), "threshold"),
                          (dict(name="oak-lane"), "is not the id"), (dict(admins=good["admins"][:1] * 2), "distinct"),
                          (dict(admins=["zz"]), "admins\\[0\\]"), (dict(id=""), "id is missing")):
        with pytest.raises(ConfigError, match=match):
            from_dict({"zone": {**good, **change}})
    with pytest.raises(ConfigError, match="market.zone"):
        from_dict({"zone": good, "market": {"enabled": True, "zone": "other"},
                   "overlay": {"enabled": True}, "channels": {"enabled": True}})


def test_admin_keys_are_written_private(tmp_path: Path) -> None:
    found_and_admit(tmp_path / "z", "elm-street", [], T0, T0 + DAY)
    for p in (tmp_path / "z").glob("admin-*.key"):
        assert p.stat().st_mode & 0o077 == 0


def test_found_and_admit_again_in_the_same_folder_reuses_the_admin_keys(tmp_path: Path) -> None:
    m = pub(PrivateKey.from_random())
    first = found_and_admit(tmp_path / "z", "elm-street", [(m, "EAN-1", "F")], T0, T0 + DAY)
    again = found_and_admit(tmp_path / "z", "elm-street", [(m, "EAN-1", "F")], T0 + 5, T0 + DAY)
    assert again.admins == first.admins and again.id != first.id  # another founding time, another zone
    roster = Roster(again.zone())
    for raw in sorted((tmp_path / "z" / "records").iterdir()):
        roster.offer(raw.read_bytes(), T0 + 10)
    assert roster.is_member(m, T0 + 10)
