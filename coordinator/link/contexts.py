"""OSCORE security contexts on disk, found by kid.

One directory per context in aiocoap's FilesystemSecurityContext format
(settings.json: ids and algorithm; secret.json, mode 0600: master secret
and salt; sequence.json: aiocoap's sender sequence number and replay
window, persisted by aiocoap in blocks and whole at a clean stop):

    <root>/meters/<device id>/      the coordinator's side of a meter's context
    <root>/installers/<name>/       the coordinator's side of an installer's

The coordinator's sender id is empty in every context; a meter's is the
first 6 bytes of its device id, an installer's 3 random bytes, so kids
never collide between the two kinds. The store is the `server_credentials`
OscoreSiteWrapper asks: `find_oscore` is a dictionary look-up by kid (not
aiocoap's scan of every context), and an unknown kid makes it look at the
directories again when one of them changed (a stat, no listing), so an
installer context made with `microgrid coordinator installer-context`
while the coordinator runs is found without a restart. Master secrets are never logged.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from aiocoap.credentials import CredentialsMap
from aiocoap.oscore import COSE_KID, COSE_KID_CONTEXT, FilesystemSecurityContext

from ..secrets import write_new_secret_file

log = logging.getLogger("microgrid.link")

METERS = "meters"
INSTALLERS = "installers"
SERVER_ID = b""
METER_KID_BYTES = 6
INSTALLER_KID_BYTES = 3


def write_context_dir(path: Path, secret: bytes, salt: bytes, sender_id: bytes, recipient_id: bytes) -> None:
    """A new aiocoap context directory at `path` (must not exist), written
    beside it first and renamed into place whole."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir(parents=True, mode=0o700)
    (tmp / "settings.json").write_text(json.dumps({
        "algorithm": "AES-CCM-16-64-128", "kdf-hashfun": "sha256",
        "sender-id_hex": sender_id.hex(), "recipient-id_hex": recipient_id.hex()}) + "\n")
    write_new_secret_file(tmp / "secret.json",
                          json.dumps({"secret_hex": secret.hex(), "salt_hex": salt.hex()}) + "\n")
    os.replace(tmp, path)


def new_installer_context(root: Path, name: str, client_dir: Path) -> bytes:
    """A new installer context: the coordinator's side under
    ROOT/installers/NAME (a running coordinator finds it at the first
    request), the installer's at `client_dir` (an aiocoap context directory
    for `microgrid flash --installer-context DIR`). Returns the kid. Works
    beside a running coordinator: it loads no context (their locks are the
    coordinator's)."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"installer name {name!r}: expected letters, digits, - _ .")
    installers = Path(root) / INSTALLERS
    installers.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = installers / name
    if path.exists():
        raise ValueError(f"installer context {name!r} exists ({path}): remove it to make a new one")
    if client_dir.exists():
        raise ValueError(f"{client_dir} exists: give a new directory for the installer's context")
    used = set()
    for other in installers.iterdir():
        try:
            used.add(json.loads((other / "settings.json").read_text()).get("recipient-id_hex"))
        except (OSError, ValueError):
            continue
    while True:
        kid = secrets.token_bytes(INSTALLER_KID_BYTES)
        if kid.hex() not in used:
            break
    secret, salt = secrets.token_bytes(16), secrets.token_bytes(8)
    client_dir.parent.mkdir(parents=True, exist_ok=True)
    write_context_dir(client_dir, secret, salt, kid, SERVER_ID)
    write_context_dir(path, secret, salt, SERVER_ID, kid)
    return kid


class ContextStore(CredentialsMap):
    """Every context under `root`, by kid; also an aiocoap CredentialsMap."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = Path(root)
        self._by_kid: dict[bytes, FilesystemSecurityContext] = {}
        self._mtimes: tuple[int, ...] = ()
        for kind in (METERS, INSTALLERS):
            (self.root / kind).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o700)
        self.scan()

    # -- loading -----------------------------------------------------------

    def scan(self) -> int:
        """Load the context directories not loaded yet; returns how many."""
        self._mtimes = self._dir_mtimes()
        found = 0
        for kind in (METERS, INSTALLERS):
            for path in sorted((self.root / kind).iterdir()):
                label = f"{kind[:-1]}:{path.name}"
                if path.name.startswith(".") or not path.is_dir() or label in self:
                    continue
                if self._load(kind[:-1], path.name, path):
                    found += 1
        return found

    def _dir_mtimes(self) -> tuple[int, ...]:
        return tuple((self.root / kind).stat().st_mtime_ns for kind in (METERS, INSTALLERS))

    def _load(self, kind: str, name: str, path: Path) -> bool:
        try:
            ctx = FilesystemSecurityContext(str(path))
        except Exception as e:  # noqa: BLE001 - a broken directory must not stop the others
            log.error("OSCORE context %s not loaded: %s", path, e)
            return False
        ctx.microgrid_owner = (kind, name)  # type: ignore[attr-defined]
        other = self._by_kid.get(ctx.recipient_id)
        if other is not None:
            log.error("OSCORE context %s not loaded: its kid %s is %s's", path, ctx.recipient_id.hex(),
                      other.microgrid_owner)  # type: ignore[attr-defined]
            ctx._destroy()
            return False
        self[f"{kind}:{name}"] = ctx
        self._by_kid[ctx.recipient_id] = ctx
        return True

    def find_oscore(self, unprotected: dict[int, Any]) -> FilesystemSecurityContext:
        kid = unprotected.get(COSE_KID)
        ctx = self._by_kid.get(kid) if isinstance(kid, bytes) else None
        if ctx is None and isinstance(kid, bytes) and self._dir_mtimes() != self._mtimes:
            self.scan()
            ctx = self._by_kid.get(kid)
        if ctx is None or unprotected.get(COSE_KID_CONTEXT) != ctx.id_context:
            raise KeyError(kid)
        return ctx

    # -- provisioning --------------------------------------------------------

    def meter_context(self, device_id: str) -> dict[str, str]:
        """A new context for meter `device_id` (replacing any it had): the
        coordinator's side stored and loaded, the meter's side returned as
        edge/oscore.py reads it. Called only over a protected channel."""
        kid = bytes.fromhex(device_id)[:METER_KID_BYTES]
        secret, salt = secrets.token_bytes(16), secrets.token_bytes(8)
        label = f"meter:{device_id}"
        other = self._by_kid.get(kid)
        if other is not None and other.microgrid_owner != ("meter", device_id):  # type: ignore[attr-defined]
            raise ValueError(f"kid {kid.hex()} of {device_id} is already {other.microgrid_owner}'s")  # type: ignore[attr-defined]
        path = self.root / METERS / device_id
        self._drop(label, path)
        write_context_dir(path, secret, salt, SERVER_ID, kid)
        if not self._load("meter", device_id, path):
            raise OSError(f"the new OSCORE context {path} did not load")
        log.info("OSCORE context for meter %s (kid %s) created", device_id, kid.hex())
        return {"secret": secret.hex(), "salt": salt.hex(), "sender_id": kid.hex(), "recipient_id": SERVER_ID.hex()}

    def _drop(self, label: str, path: Path) -> None:
        ctx = self.pop(label, None)
        if ctx is not None:
            self._by_kid.pop(ctx.recipient_id, None)
            ctx._destroy()
        if path.exists():
            shutil.rmtree(path)

    def owner(self, ctx: Any) -> tuple[str, str] | None:
        return getattr(ctx, "microgrid_owner", None)

    def close(self) -> None:
        for ctx in list(self.values()):
            try:
                ctx._destroy()  # writes the replay window and sequence number, releases the lock
            except Exception as e:  # noqa: BLE001
                log.error("OSCORE context %s not closed cleanly: %s", ctx.basedir, e)
        self.clear()
        self._by_kid.clear()
