"""`microgrid coordinator ...` subcommands."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from .config import Config, ConfigError, load


def _load(args: argparse.Namespace) -> Config:
    config = load(args.config)
    if getattr(args, "host", None):
        config.coap.host = args.host
    if getattr(args, "port", None) is not None:
        config.coap.port = args.port
    if getattr(args, "db", None):
        config.store.path = args.db
    return config.validate()


def _run(args: argparse.Namespace) -> int:
    from .app import serve

    try:
        config = _load(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .logs import setup_logging

    setup_logging(config.log.level)
    try:
        asyncio.run(serve(config))
    except OSError as e:
        print(f"error: cannot serve on {config.coap.host}:{config.coap.port}: {e}", file=sys.stderr)
        return 1
    return 0


def _register(args: argparse.Namespace) -> int:
    from microgrid.shared import secp256k1

    from .store.database import open_database
    from .store.readings import ReadingStore

    try:
        config = _load(args)
        public_key = bytes.fromhex(args.pubkey)
        secp256k1.decode_public_key(public_key)
        if len(public_key) != 33:
            raise ValueError("expected the 33-byte compressed form (66 hex characters, starting 02 or 03)")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: --pubkey {args.pubkey!r} is not a secp256k1 public key: {e}", file=sys.stderr)
        return 2
    store = ReadingStore(open_database(config.store.path))
    device, created = store.register_device(public_key, args.name or "")
    result = {"device_id": device.device_id, "name": device.name, "created": created, "database": config.store.path}
    if args.json:
        print(json.dumps(result))
    else:
        verb = "registered" if created else "already registered"
        print(f"{verb} device {device.device_id} ({device.name}) in {config.store.path}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"config ok: coap {config.coap.host}:{config.coap.port}, database {config.store.path}")
    return 0


def _backup(args: argparse.Namespace) -> int:
    from .store.backup import backup_database, backup_file
    from .store.database import StoreError

    try:
        config = _load(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.to)
    written = []
    try:
        written.append(backup_database(config.store.path, out / "coordinator.db"))
        channels = config.resolve(config.channels.store_path)
        if channels.exists():
            written.append(backup_database(channels, out / "channels.db"))
        for name, path in (("wallet.json", config.resolve(config.channels.wallet_path)),
                           ("coordinator.key", config.resolve(config.identity.key_file))):
            copied = backup_file(path, out / name)
            if copied is not None:
                written.append(copied)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in written:
        print(f"backed up {p}")
    return 0


def _api_token(args: argparse.Namespace) -> int:
    """A new application token: the token for the application, its SHA-256
    for [api] token_sha256 (the coordinator keeps only the hash)."""
    from .ingest.access import new_token

    token, digest = new_token()
    print(f"token (give it to the application; shown once): {token}")
    print(f"add to [api] token_sha256 in the coordinator's config: \"{digest}\"")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("coordinator", help="run and administer a coordinator")
    csub = p.add_subparsers(dest="coordinator_command", metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", help="TOML config file (default: built-in defaults)")
        q.add_argument("--db", help="SQLite database path (overrides [store] path)")

    run = csub.add_parser("run", help="serve CoAP: receive, verify and store readings")
    common(run)
    run.add_argument("--host", help="address to bind (overrides [coap] host)")
    run.add_argument("--port", type=int, help="UDP port (overrides [coap] port)")
    run.set_defaults(func=_run)

    reg = csub.add_parser("register-device", help="register a meter's public key")
    common(reg)
    reg.add_argument("--pubkey", required=True, help="compressed secp256k1 public key, hex")
    reg.add_argument("--name", help="a human name for the meter")
    reg.add_argument("--json", action="store_true", help="print the result as JSON")
    reg.set_defaults(func=_register)

    bak = csub.add_parser("backup", help="a consistent copy of the database, channel states, wallet and key, while running")
    common(bak)
    bak.add_argument("--to", required=True, help="folder for the copies")
    bak.set_defaults(func=_backup)

    from .link.cli import add_parser as add_link_parser

    add_link_parser(csub, common, _load)
    tok = csub.add_parser("api-token", help="make an application token for the API (and the hash to configure)")
    tok.set_defaults(func=_api_token)

    chk = csub.add_parser("check-config", help="validate a config file without starting")
    chk.add_argument("--config", required=True)
    chk.set_defaults(func=_check_config)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
