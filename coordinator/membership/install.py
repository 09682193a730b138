"""Found a zone and admit its coordinators in one go, where one person
holds every admin key: the demo, tests, a trial street. A real zone's
admins each keep their own key and sign with `microgrid zone sign`."""

from __future__ import annotations

from pathlib import Path

from . import keys, records
from .settings import ZoneSettings


def found_and_admit(folder: Path, name: str, members: list[tuple[bytes, str, str]], issued: int, expires: int,
                    admins: int = 3, k: int = 2) -> ZoneSettings:
    """Admin keys in `folder` (0600; the ones already there are used
    again), the founding record, and one admission per (member key,
    connection point, feeder) signed by k admins in `folder`/records.
    Returns the [zone] settings naming the zone and that records folder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"admin-{i + 1}.key" for i in range(admins)]
    secrets = [keys.load(p) if p.exists() else keys.create(p) for p in paths]
    zone = records.found(name, [keys.public(s) for s in secrets], k, issued)
    (folder / "zone.cbor").write_bytes(zone.encode())
    out = folder / "records"
    out.mkdir(exist_ok=True)
    for member, point, feeder in members:
        rec = records.admission(zone, member, point, feeder, issued, expires)
        (out / f"admit-{rec.member_id}.cose").write_bytes(records.signed(rec, *secrets[:k]))
    return ZoneSettings(id=zone.id_hex, name=name, admins=[a.hex() for a in zone.admins], threshold=k,
                        founded=issued, records_dir=str(out)).validate()
