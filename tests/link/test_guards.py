"""What each context may do at the coordinator (coordinator/link/guard.py),
on a real coordinator over real UDP with aiocoap's OSCORE client: a
meter's context posts its own readings only and registers nothing; an
installer's registers meters (and hands them their contexts) but posts no
readings; unprotected registration is locked out per address after
repeated failures; the [link] settings are validated."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from aiocoap.oscore import FilesystemSecurityContext

from microgrid.coordinator.config import ConfigError, from_dict
from microgrid.coordinator.link.contexts import new_installer_context, write_context_dir
from microgrid.coordinator.link.guard import MAX_SOURCES, AttemptLimiter
from microgrid.shared import cbor, reading, secp256k1

TOKEN = "install-day-7f3a1"


async def post(uri: str, payload: bytes, context_dir: Path | None, cf: int) -> aiocoap.Message:
    ctx = await aiocoap.Context.create_client_context()
    security = None
    if context_dir is not None:
        security = FilesystemSecurityContext(str(context_dir))
        ctx.client_credentials[":c"] = security
        ctx.client_credentials[uri.rsplit("/", 1)[0] + "/*"] = ":c"
    try:
        msg = aiocoap.Message(code=Code.POST, uri=uri, payload=payload, content_format=cf)
        return await asyncio.wait_for(ctx.request(msg).response, 20)
    finally:
        await ctx.shutdown()
        if security is not None:
            security._destroy()


def meter(n: int) -> tuple[bytes, bytes]:
    secret = (1000 + n).to_bytes(32, "big")
    return secret, secp256k1.public_key(secret)


def test_each_context_may_do_only_its_own_job_and_guessing_is_locked_out(tmp_path: Path, coordinator_factory) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[ingest]\ninstaller_token = "{TOKEN}"\n[link]\nregistration_failures = 4\n')
    coord = coordinator_factory(db=tmp_path / "c.db", config=config)
    base = f"coap://127.0.0.1:{coord.port}"
    installer = tmp_path / "installer"
    new_installer_context(tmp_path / "oscore", "carol", installer)
    dirs = {}
    for n in (1, 2):
        body = cbor.dumps({"public_key": meter(n)[1], "name": f"m{n}", "oscore": True})
        got = asyncio.run(post(f"{base}/devices", body, installer, 60))
        assert got.code == Code.CREATED, got.payload
        doc = cbor.loads(got.payload)
        assert doc["device_id"] == reading.device_id(meter(n)[1]) and "token" not in doc
        c = doc["oscore"]
        dirs[n] = tmp_path / f"meter{n}"
        write_context_dir(dirs[n], bytes.fromhex(c["secret"]), bytes.fromhex(c["salt"]),
                          bytes.fromhex(c["sender_id"]), bytes.fromhex(c["recipient_id"]))

    def signed(n: int, seq: int) -> bytes:
        secret, pub = meter(n)
        return reading.build(secret, pub, seq, 1_700_000_000 + seq, 100 * seq, 0, 1.0, 230.0, [])

    # Meter 1's context cannot carry meter 2's reading; its own goes in.
    got = asyncio.run(post(f"{base}/readings", signed(2, 1), dirs[1], 18))
    assert got.code == Code.FORBIDDEN and b"cannot post readings of" in got.payload
    got = asyncio.run(post(f"{base}/readings", signed(1, 1), dirs[1], 18))
    assert got.code == Code.CREATED, got.payload
    # A meter's context registers nothing; an installer's posts no readings.
    body = cbor.dumps({"public_key": meter(3)[1], "name": "m3"})
    assert asyncio.run(post(f"{base}/devices", body, dirs[1], 60)).code == Code.FORBIDDEN
    assert asyncio.run(post(f"{base}/readings", signed(2, 1), installer, 18)).code == Code.FORBIDDEN
    # Plain CoAP readings are accepted by default (migration): meter 2's.
    assert asyncio.run(post(f"{base}/readings", signed(2, 1), None, 18)).code == Code.CREATED
    # Guessing the installer token in clear: with the meter context's try
    # above, 4 failures from this address, then 4.29 even for the right token.
    for guess in range(3):
        body = cbor.dumps({"public_key": meter(4)[1], "token": f"guess-{guess}"})
        assert asyncio.run(post(f"{base}/devices", body, None, 60)).code == Code.UNAUTHORIZED
    body = cbor.dumps({"public_key": meter(4)[1], "token": TOKEN})
    got = asyncio.run(post(f"{base}/devices", body, None, 60))
    assert got.code == Code.TOO_MANY_REQUESTS and b"try again in" in got.payload
    # Malformed OSCORE options (Partial IV announced but missing, reserved
    # flags) get 4.02, an unknown kid 4.01: no 5.00, no traceback logged.
    import socket

    junk = [bytes([0x40, 2, 0, 1, 0x91, 0x09, 0xFF]) + bytes(20), bytes([0x40, 2, 0, 2, 0x91, 0xFF, 0xFF]) + bytes(20),
            bytes([0x40, 2, 0, 3, 0x93, 0x09, 0x01, 0x77, 0xFF]) + bytes(20)]
    # meter 1's kid with a made-up ciphertext: fails decryption, 4.00.
    kid1 = json.loads((dirs[1] / "settings.json").read_text())["sender-id_hex"]
    junk.append(bytes([0x40, 2, 0, 4, 0x98, 0x09, 0x05]) + bytes.fromhex(kid1) + b"\xff" + bytes(30))
    codes = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        for datagram in junk:
            s.sendto(datagram, ("127.0.0.1", coord.port))
            codes.append(s.recv(2048)[1])
    assert codes == [130, 130, 129, 128]  # 4.02, 4.02, 4.01, 4.00
    # EDHOC is not offered: 4.04, and no log line per attempt.
    got = asyncio.run(post(f"{base}/.well-known/edhoc", b"\xf5garbage", None, 60))
    assert got.code == Code.NOT_FOUND
    log = coord.log_path.read_text()
    assert "EDHOC" not in log and "Traceback" not in log
    for n in (1, 2):
        secret = json.loads((dirs[n] / "secret.json").read_text())["secret_hex"]
        assert secret not in log  # no master secret logged
        stored = tmp_path / "oscore" / "meters" / reading.device_id(meter(n)[1]) / "secret.json"
        assert stored.stat().st_mode & 0o077 == 0  # the coordinator's copy readable by its owner only


def test_the_limiter_forgets_after_its_window_and_stays_bounded() -> None:
    now = [0.0]
    lim = AttemptLimiter(2, 60, clock=lambda: now[0])
    assert lim.wait_s("a") == 0
    lim.fail("a")
    lim.fail("a")
    assert lim.wait_s("a") == 60 and lim.wait_s("b") == 0
    now[0] = 59.0
    assert lim.wait_s("a") == 1
    now[0] = 60.0
    assert lim.wait_s("a") == 0
    for i in range(MAX_SOURCES + 100):
        lim.fail(f"host{i}")
    assert len(lim._failures) == MAX_SOURCES


@pytest.mark.parametrize("raw, why", [
    ({"unprotected_readings": "maybe"}, "expected one of accept, refuse"),
    ({"registration_failures": 0}, "1..1000"),
    ({"contexts_dir": ""}, "directory path"),
])
def test_bad_link_settings_stop_the_start(raw: dict, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        from_dict({"link": raw})


def test_installer_context_command_writes_both_sides_and_prints_no_secret(tmp_path: Path) -> None:
    import subprocess
    import sys

    def make(name: str, out: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "microgrid.cli", "coordinator", "installer-context", name,
                               "--out", str(out), "--db", str(tmp_path / "c.db")], capture_output=True, text=True,
                              timeout=60)

    done = make("erin", tmp_path / "erin")
    assert done.returncode == 0, done.stderr
    client = json.loads((tmp_path / "erin" / "settings.json").read_text())
    server = json.loads((tmp_path / "oscore" / "installers" / "erin" / "settings.json").read_text())
    assert client["sender-id_hex"] == server["recipient-id_hex"] and len(bytes.fromhex(client["sender-id_hex"])) == 3
    secret = json.loads((tmp_path / "erin" / "secret.json").read_text())["secret_hex"]
    assert secret not in done.stdout + done.stderr and client["sender-id_hex"] in done.stdout
    assert (tmp_path / "erin" / "secret.json").stat().st_mode & 0o077 == 0
    again = make("erin", tmp_path / "erin2")  # the same name: refused, nothing overwritten
    assert again.returncode == 2 and "exists" in again.stderr
    assert make("../evil", tmp_path / "evil").returncode == 2
