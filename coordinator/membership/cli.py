"""`microgrid zone ...`: found a zone, admit, renew, revoke, co-sign, show,
list and publish membership records (docs/MEMBERSHIP.md).

Admins sign offline: `admit`/`renew`/`revoke` write a record file, each
admin runs `zone sign FILE --key THEIR.key` on the same file (passed from
hand to hand, by USB stick or mail: it holds no secret), and once k have
signed, `zone publish FILE` puts it on the overlay. Private keys stay in
their 0600 files: never printed, never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from . import keys, records
from .records import MembershipError
from .roster import Roster

DAY = 86400


class CliError(Exception):
    """A user error: printed without a traceback, exit status 2."""


# -- helpers ------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    """Atomically, so an interrupted sign never leaves half a record."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _pubkey(text: str, what: str) -> bytes:
    try:
        b = bytes.fromhex(text)
    except ValueError:
        b = b""
    if len(b) != 33 or b[:1] not in (b"\x02", b"\x03"):
        raise CliError(f"{what} {text!r}: expected a compressed public key, 66 hex digits starting 02 or 03")
    return b


def _roster(args: argparse.Namespace) -> Roster:
    """The zone and what is known of it: with --config, the coordinator's
    records folder and cache (admin rotations included); with --zone, the
    founding record and any --rotation files."""
    if getattr(args, "zone", None):
        try:
            roster = Roster(records.parse_zone(Path(args.zone).read_bytes()))
        except OSError as e:
            raise CliError(f"cannot read the founding record {args.zone}: {e.strerror}") from None
        for p in getattr(args, "rotation", None) or []:
            try:
                roster.offer(Path(p).read_bytes(), time.time())
            except OSError as e:
                raise CliError(f"cannot read the rotation record {p}: {e.strerror}") from None
        return roster
    if getattr(args, "config", None):
        from ..clock import SystemClock
        from .sync import MembershipSync

        config = _config(args)
        roster = Roster(config.zone.zone())
        # No overlay and no own key: only the records folder and the cache are read.
        MembershipSync(None, roster, SystemClock(), b"", records_dir=config.resolve(config.zone.records_dir),
                       cache_path=config.resolve(config.zone.cache_path)).load_local()
        return roster
    raise CliError("name the zone: --zone zone.cbor (from `microgrid zone found`) or --config coordinator.toml")


def _signers_of(roster: Roster, rec: records.Record) -> records.AdminSet:
    """The admin set whose k signatures `rec` needs."""
    if rec.type == records.ROTATE:
        if rec.epoch > len(roster.chain):
            raise CliError(f"rotation to admin set {rec.epoch}: set {rec.epoch - 1} is not known here "
                           f"(pass its rotation record with --rotation, or use --config)")
        return roster.chain[rec.epoch - 1]
    return roster.admins_at(rec.issued)


def _config(args: argparse.Namespace) -> Any:
    from ..config import load

    config = load(args.config)
    if not config.zone.enabled:
        raise CliError(f"{args.config} has no [zone] id: paste the section `microgrid zone found` printed")
    return config


def _now(args: argparse.Namespace) -> int:
    return int(args.issued) if getattr(args, "issued", None) is not None else int(time.time())


def _describe(raw: bytes, roster: Roster, now: float) -> dict[str, Any]:
    r = records.parse(raw)
    try:
        roster.check(raw)
        valid = "valid"
    except MembershipError as e:
        valid = f"not valid yet: {e}"
    aset = _signers_of(roster, r)
    admins = aset.admin_by_kid()
    out: dict[str, Any] = {"type": r.type}
    if r.type == records.ROTATE:
        out.update(epoch=r.epoch, admins=[a.hex() for a in r.admins], k=r.k)
    else:
        out["member"] = r.member.hex()
    out["issued"] = r.issued
    if r.type == records.ADMIT:
        out.update(expires=r.expires, connection=r.connection, feeder=r.feeder,
                   expired=now >= r.expires)
    elif r.reason:
        out["reason"] = r.reason
    out["zone"] = r.zone.hex()
    out["signed_by"] = [admins[k].hex() if k in admins else f"unknown key id {k.hex()}"
                        for k in records.signer_kids(raw)]
    out["needs"] = f"{aset.k} of {len(aset.admins)}" + (f" (admin set {aset.epoch})" if aset.epoch else "")
    out["status"] = valid
    return out


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=1))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            print(f"{k:10} {', '.join(v) if isinstance(v, list) else v}")
    else:
        print(obj)


# -- commands -----------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    key = keys.create(Path(args.out))
    print(f"admin key written to {args.out} (mode 600: keep it offline, back it up)")
    print(f"public key: {keys.public(key).hex()}")
    return 0


def _member_key(args: argparse.Namespace) -> int:
    """This coordinator's public key, to be admitted (its private key is
    read, not shown)."""
    from ..app import load_or_create_key
    from ..config import load

    config = load(args.config)
    path = config.resolve(config.identity.key_file)
    if not path.exists():
        raise CliError(f"no identity key at {path} yet: start the coordinator once, or check [identity] key_file")
    print(load_or_create_key(path).public_key.to_hex(compressed=True))
    return 0


def _found(args: argparse.Namespace) -> int:
    admins = [_pubkey(a, "--admin") for a in args.admin or []]
    admins += [keys.public(keys.load(Path(p))) for p in args.admin_key or []]
    zone = records.found(args.name, admins, args.threshold, _now(args))
    out = Path(args.out)
    if out.exists():
        raise CliError(f"{out} exists: refusing to overwrite a founding record")
    out.write_bytes(zone.encode())
    print(f"zone {zone.name} founded: {zone.k} of {len(zone.admins)} admins must sign; founding record in {out}")
    print(f"zone id: {zone.id_hex}")
    print("\nPut this section in every member's coordinator.toml:\n")
    print("[zone]")
    print(f'id = "{zone.id_hex}"')
    print(f'name = "{zone.name}"')
    print("admins = [" + ", ".join(f'"{a.hex()}"' for a in zone.admins) + "]")
    print(f"threshold = {zone.k}")
    print(f"founded = {zone.founded}")
    return 0


def _finish(args: argparse.Namespace, roster: Roster, rec: records.Record) -> int:
    raw = records.unsigned(rec)
    for p in args.key or []:
        raw = records.add_signature(raw, keys.load(Path(p)))
    out = Path(args.out)
    if out.exists():
        raise CliError(f"{out} exists: pick another file name")
    _write(out, raw)
    n = len(records.signer_kids(raw))
    k = _signers_of(roster, rec).k
    what = f"admin set {rec.epoch}" if rec.type == records.ROTATE else rec.member.hex()
    print(f"{rec.type} record for {what} written to {out}: {n} of the {k} signatures needed")
    if n < k:
        print(f"next: each other admin runs `microgrid zone sign {out} --key THEIR.key`")
    return 0


def _admit(args: argparse.Namespace) -> int:
    roster = _roster(args)
    issued = _now(args)
    rec = records.admission(roster.zone, _pubkey(args.member, "--member"), args.connection, args.feeder, issued,
                            issued + args.days * DAY)
    return _finish(args, roster, rec)


def _renew(args: argparse.Namespace) -> int:
    roster = _roster(args)
    try:
        old = records.parse(Path(args.record).read_bytes())
    except OSError as e:
        raise CliError(f"cannot read {args.record}: {e.strerror}") from None
    if old.type != records.ADMIT:
        raise CliError(f"{args.record} is a {old.type} record: renew an admission (after a revocation, admit anew)")
    issued = _now(args)
    if issued <= old.issued:
        raise CliError(f"a renewal must be issued after the record it renews ({old.issued})")
    rec = records.admission(roster.zone, old.member, args.connection or old.connection, args.feeder or old.feeder,
                            issued, issued + args.days * DAY)
    return _finish(args, roster, rec)


def _revoke(args: argparse.Namespace) -> int:
    roster = _roster(args)
    return _finish(args, roster, records.revocation(roster.zone, _pubkey(args.member, "--member"), _now(args),
                                                    args.reason))


def _rotate(args: argparse.Namespace) -> int:
    roster = _roster(args)
    admins = [_pubkey(a, "--admin") for a in args.admin or []]
    admins += [keys.public(keys.load(Path(p))) for p in args.admin_key or []]
    epoch = args.epoch if args.epoch is not None else len(roster.chain)
    return _finish(args, roster, records.rotation(roster.zone, epoch, admins, args.threshold, _now(args)))


def _sign(args: argparse.Namespace) -> int:
    path = Path(args.record)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    key = keys.load(Path(args.key))
    aset = None
    if args.zone or args.config:
        aset = _signers_of(_roster(args), records.parse(raw))
        if keys.public(key) not in aset.admins:
            raise CliError(f"key {keys.public(key).hex()} is not an admin of this zone for this record: not signed")
    raw = records.add_signature(raw, key)
    _write(path, raw)
    n = len(records.signer_kids(raw))
    need = f" of the {aset.k} needed" if aset is not None else ""
    print(f"signed {path} as {keys.public(key).hex()}: {n} signature(s){need}")
    return 0


def _show(args: argparse.Namespace) -> int:
    roster = _roster(args)
    try:
        raw = Path(args.record).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {args.record}: {e.strerror}") from None
    _print(_describe(raw, roster, time.time()), args.json)
    return 0


def _list(args: argparse.Namespace) -> int:
    config, roster = _config(args), _roster(args)
    now = time.time()
    if args.fetch:
        asyncio.run(_fetch(config, roster))
    rows = []
    for key, r in sorted(roster.latest.items()):
        row = {"member": key.hex(), "status": roster.status(key, now), "issued": r.issued}
        if r.type == records.ADMIT:
            row.update(connection=r.connection, feeder=r.feeder, expires=r.expires)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"zone {roster.zone.name} ({roster.zone.id_hex[:16]}): {len(roster.members(now))} current member(s)")
        for row in rows:
            print(f"  {row['member']}  {row['status']:8}  {row.get('connection', '-'):24} {row.get('feeder', '-'):16}"
                  f" until {row.get('expires', '-')}")
    return 0


async def _overlay(config: Any) -> Any:
    """A short-lived overlay node of our own (a new key, any port), joined
    through the configured neighbours and the local coordinator's node."""
    from bitcoinx import PrivateKey

    from ..overlay import Overlay

    s = config.overlay
    boot = list(s.bootstrap)
    if s.port:
        host = "127.0.0.1" if s.bind4 in ("0.0.0.0", "") else s.bind4
        boot.append(f"{host}:{s.port}")
    # It stores nothing others need (its puts are stored on their nodes):
    # no hand-over on stop, so the command ends at once.
    settings = dataclasses.replace(s, port=0, bootstrap=boot, state_path="", lan_discovery=False,
                                   maintain_storage=False)
    overlay = Overlay(PrivateKey.from_random(), settings)
    await overlay.start()
    # A put before the node knows a peer is stored nowhere else: wait
    # (bounded) until the bootstrap has answered.
    for _ in range(100):
        if not boot or any(p.status == "good" for p in overlay.peers()):
            break
        await asyncio.sleep(0.1)
    return overlay


async def _fetch(config: Any, roster: Roster) -> None:
    from .sync import fetch

    overlay = await _overlay(config)
    try:
        await fetch(overlay, roster, time.time())
    finally:
        await overlay.stop()


def _publish(args: argparse.Namespace) -> int:
    config = _config(args)
    roster = _roster(args)
    zone = roster.zone
    path = Path(args.record)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    r = roster.check(raw)  # nothing that readers would refuse goes out
    folder = config.resolve(config.zone.records_dir)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{r.type}-{r.member_id}-{r.issued}.cose"
    if path.resolve() != dest.resolve():
        shutil.copyfile(path, dest)
    print(f"{r.type} record for {r.member.hex()} copied to {dest} (this coordinator reads it within "
          f"{config.zone.refresh_s} s)")
    if args.no_overlay or not config.overlay.enabled:
        return 0

    async def put() -> bool:
        from .sync import publish

        overlay = await _overlay(config)
        try:
            return await publish(overlay, zone, raw, roster=roster)
        finally:
            await overlay.stop()

    ok = asyncio.run(put())
    print("published on the overlay" if ok else "the overlay did not confirm the put: the coordinators still "
          "republish it from the records folder; try again when the neighbours are up")
    return 0 if ok else 1


def _run(func: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        from ..config import ConfigError
        from .keys import KeyFileError

        try:
            return int(func(args))
        except (CliError, MembershipError, KeyFileError, ConfigError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return wrapped


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zone", help="found a zone and admit, renew or revoke its members (docs/MEMBERSHIP.md)")
    zsub = p.add_subparsers(dest="zone_command", metavar="ACTION")

    def which_zone(q: argparse.ArgumentParser) -> None:
        q.add_argument("--zone", help="the zone's founding record (zone.cbor)")
        q.add_argument("--rotation", action="append", help="with --zone: an admin rotation record, in order")
        q.add_argument("--config", help="a coordinator.toml with the [zone] section (knows the rotations)")

    def signing(q: argparse.ArgumentParser) -> None:
        which_zone(q)
        q.add_argument("--out", required=True, help="record file to write (then passed to the other admins)")
        q.add_argument("--key", action="append", help="sign at once with this admin key file (repeatable)")
        q.add_argument("--issued", type=int, help="issue time, seconds since the epoch (default: now)")

    q = zsub.add_parser("keygen", help="a new admin key (file mode 600); prints the public key only")
    q.add_argument("--out", required=True)
    q.set_defaults(func=_run(_keygen))

    q = zsub.add_parser("member-key", help="this coordinator's public key (what admins admit)")
    q.add_argument("--config", required=True)
    q.set_defaults(func=_run(_member_key))

    q = zsub.add_parser("found", help="found a zone: admin keys and threshold k; prints the zone id and [zone]")
    q.add_argument("--name", required=True, help="the zone's name, as [market] zone (a-z0-9._-)")
    q.add_argument("--admin", action="append", help="an admin's public key, hex (repeatable)")
    q.add_argument("--admin-key", action="append", help="an admin key file (its public key is used)")
    q.add_argument("--threshold", "-k", type=int, required=True, help="admin signatures a record needs")
    q.add_argument("--issued", type=int, help="founding time (default: now); part of the zone id")
    q.add_argument("--out", default="zone.cbor")
    q.set_defaults(func=_run(_found))

    q = zsub.add_parser("admit", help="an admission record for a coordinator key")
    signing(q)
    q.add_argument("--member", required=True, help="the coordinator's public key, hex")
    q.add_argument("--connection", required=True, help="its grid connection point (meter point id)")
    q.add_argument("--feeder", required=True, help="the feeder its connection hangs on")
    q.add_argument("--days", type=int, default=365, help="how long the membership runs (default 365)")
    q.set_defaults(func=_run(_admit))

    q = zsub.add_parser("renew", help="a newer admission from an existing one")
    signing(q)
    q.add_argument("record", help="the admission to renew")
    q.add_argument("--connection", help="a new connection point (default: unchanged)")
    q.add_argument("--feeder", help="a new feeder (default: unchanged)")
    q.add_argument("--days", type=int, default=365)
    q.set_defaults(func=_run(_renew))

    q = zsub.add_parser("revoke", help="a revocation record for a coordinator key")
    signing(q)
    q.add_argument("--member", required=True)
    q.add_argument("--reason", default="")
    q.set_defaults(func=_run(_revoke))

    q = zsub.add_parser("rotate", help="a new admin set (signed by k admins of the current one)")
    signing(q)
    q.add_argument("--admin", action="append", help="a new admin's public key, hex (repeatable)")
    q.add_argument("--admin-key", action="append", help="a new admin's key file (its public key is used)")
    q.add_argument("--threshold", "-k", type=int, required=True)
    q.add_argument("--epoch", type=int, help="the new set's number (default: the next)")
    q.set_defaults(func=_run(_rotate))

    q = zsub.add_parser("sign", help="add your signature to a record file, in place")
    q.add_argument("record")
    q.add_argument("--key", required=True, help="your admin key file")
    which_zone(q)
    q.set_defaults(func=_run(_sign))

    q = zsub.add_parser("show", help="what a record says and whether it is valid")
    q.add_argument("record")
    which_zone(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_run(_show))

    q = zsub.add_parser("list", help="the members this coordinator knows (records folder and cache)")
    q.add_argument("--config", required=True)
    q.add_argument("--fetch", action="store_true", help="read the overlay's board too")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_run(_list))

    q = zsub.add_parser("publish", help="copy a signed record into the records folder and put it on the overlay")
    q.add_argument("record")
    q.add_argument("--config", required=True)
    q.add_argument("--no-overlay", action="store_true", help="only the records folder")
    q.set_defaults(func=_run(_publish))

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
