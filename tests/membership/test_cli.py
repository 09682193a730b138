"""`microgrid zone ...` as three admins would use it, offline: keys, founding,
an admission co-signed file by file, publishing into a coordinator's
records folder, listing, revoking. No private key is ever printed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from microgrid.cli import main
from microgrid.coordinator.membership import keys


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_found_admit_cosign_publish_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []

    def ok(*args: str) -> str:
        code, out = run(capsys, *args)
        outputs.append(out)
        assert code == 0, out
        return out

    def refused(*args: str) -> str:
        code, out = run(capsys, *args)
        outputs.append(out)
        assert code == 2, out
        return out

    admin = [tmp_path / f"admin{i}.key" for i in range(3)]
    pubs = []
    for p in admin:
        out = ok("zone", "keygen", "--out", str(p))
        pubs.append(out.split("public key: ")[1].strip())
    refused("zone", "keygen", "--out", str(admin[0]))  # never overwritten
    out = ok("zone", "found", "--name", "elm-street", "--admin", pubs[0], "--admin-key", str(admin[1]),
             "--admin", pubs[2], "-k", "2", "--issued", "1790000000", "--out", str(tmp_path / "zone.cbor"))
    section = out[out.index("[zone]"):]
    config = tmp_path / "coordinator.toml"
    config.write_text(section + f'records_dir = "{tmp_path / "records"}"\ncache_path = "{tmp_path / "c.cbor"}"\n')

    member = keys.public(keys.create(tmp_path / "coordinator.key")).hex()
    config.write_text(config.read_text() + f'[store]\npath = "{tmp_path / "c.db"}"\n')
    assert ok("zone", "member-key", "--config", str(config)).strip() == member
    rec = tmp_path / "admit.cose"
    t = int(time.time()) - 1000  # issue times a few seconds apart, as admins' steps are
    ok("zone", "admit", "--config", str(config), "--member", member, "--connection", "EAN-8716", "--feeder", "F1",
       "--key", str(admin[0]), "--out", str(rec), "--issued", str(t))
    # One signature of two: show says so, publish refuses it.
    shown = json.loads(ok("zone", "show", str(rec), "--zone", str(tmp_path / "zone.cbor"), "--json"))
    assert shown["connection"] == "EAN-8716" and shown["signed_by"] == [pubs[0]]
    assert "signed by 1 admin(s): this zone needs 2 of 3" in shown["status"]
    assert "needs 2 of 3" in refused("zone", "publish", str(rec), "--config", str(config), "--no-overlay")
    # The second admin signs the same file; signing twice and strangers are refused.
    refused("zone", "sign", str(rec), "--key", str(admin[0]))
    stranger = tmp_path / "stranger.key"
    keys.create(stranger)
    assert "not an admin" in refused("zone", "sign", str(rec), "--key", str(stranger), "--config", str(config))
    ok("zone", "sign", str(rec), "--key", str(admin[2]), "--config", str(config))
    assert json.loads(ok("zone", "show", str(rec), "--config", str(config), "--json"))["status"] == "valid"
    ok("zone", "publish", str(rec), "--config", str(config), "--no-overlay")
    rows = json.loads(ok("zone", "list", "--config", str(config), "--json"))
    assert [(r["member"], r["status"], r["connection"]) for r in rows] == [(member, "member", "EAN-8716")]

    rev = tmp_path / "revoke.cose"
    ok("zone", "revoke", "--config", str(config), "--member", member, "--reason", "moved", "--key", str(admin[1]),
       "--key", str(admin[2]), "--out", str(rev), "--issued", str(t + 10))
    ok("zone", "publish", str(rev), "--config", str(config), "--no-overlay")
    rows = json.loads(ok("zone", "list", "--config", str(config), "--json"))
    assert [(r["member"], r["status"]) for r in rows] == [(member, "revoked")]
    # Renewing the old admission needs a record newer than it; after a
    # revocation a fresh admission is issued (and wins: it is newer).
    assert "after the record it renews" in refused(
        "zone", "renew", str(rec), "--config", str(config), "--issued", "1", "--out", str(tmp_path / "r.cose"))

    # Rotation: two new admins, one signature needed from now on; signed by two of the old three.
    fresh = [tmp_path / f"new{i}.key" for i in range(2)]
    for p in fresh:
        ok("zone", "keygen", "--out", str(p))
    rot = tmp_path / "rotate.cose"
    ok("zone", "rotate", "--config", str(config), "--admin-key", str(fresh[0]), "--admin-key", str(fresh[1]),
       "-k", "1", "--key", str(admin[0]), "--key", str(admin[1]), "--out", str(rot), "--issued", str(t + 20))
    ok("zone", "publish", str(rot), "--config", str(config), "--no-overlay")
    readmit = tmp_path / "readmit.cose"
    ok("zone", "admit", "--config", str(config), "--member", member, "--connection", "EAN-8716", "--feeder", "F1",
       "--out", str(readmit), "--issued", str(t + 30))
    assert "not an admin" in refused("zone", "sign", str(readmit), "--key", str(admin[2]), "--config", str(config))
    ok("zone", "sign", str(readmit), "--key", str(fresh[1]), "--config", str(config))
    ok("zone", "publish", str(readmit), "--config", str(config), "--no-overlay")
    rows = json.loads(ok("zone", "list", "--config", str(config), "--json"))
    assert [(r["member"], r["status"]) for r in rows] == [(member, "member")]

    secrets = [p.read_text().strip() for p in admin + fresh + [stranger, tmp_path / "coordinator.key"]]
    assert not any(s in out for s in secrets for out in outputs)


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "zone", "found", "--name", "elm", "--admin", "zz", "-k", "1", "--out",
                    str(tmp_path / "z.cbor"))
    assert code == 2 and "66 hex digits" in out
    p = tmp_path / "loose.key"
    keys.create(p)
    p.chmod(0o644)
    code, out = run(capsys, "zone", "found", "--name", "elm", "--admin-key", str(p), "-k", "1", "--out",
                    str(tmp_path / "z.cbor"))
    assert code == 2 and "readable by others" in out and p.read_text().strip() not in out
    code, out = run(capsys, "zone", "show", str(tmp_path / "nothing.cose"), "--zone", str(tmp_path / "none.cbor"))
    assert code == 2 and "cannot read" in out
