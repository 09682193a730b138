"""The meter's OSCORE link end to end, on real UDP: a meter flashed with
`microgrid flash --installer-context` sends its readings encrypted; an
attacker racing the coordinator with forged 2.01s never makes it drop one;
a capture shows no plaintext reading; aiocoap's own OSCORE client talks to
the coordinator with the context flash made; replays are refused, and a
coordinator killed mid-run (replay window lost) is recovered by Echo."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.oscore import FilesystemSecurityContext

from microgrid.coordinator.link.contexts import new_installer_context, write_context_dir
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.flash.unix_port import boot
from microgrid.shared import reading

from ..conftest import meter_summary
from ..flash.helpers import flash, meter_config
from .attacker import Relay

STRICT = '[link]\nunprotected_readings = "refuse"\nunprotected_registration = "refuse"\n'


def stored_seqs(db: Path) -> list[int]:
    store = ReadingStore(open_database(db))
    try:
        return sorted(r["seq"] for r in store.readings())
    finally:
        store.db.close()


def stored_cose(db: Path) -> list[bytes]:
    store = ReadingStore(open_database(db))
    try:
        return [bytes(r["cose"]) for r in store.readings()]
    finally:
        store.db.close()


def run_meter(image: Path, output: list[str] | None = None) -> dict:
    meter = boot(image)
    out, _ = meter.communicate(timeout=180)
    assert meter.returncode == 0, out
    if output is not None:
        output.append(out)
    return meter_summary(out)


def set_port(image: Path, port: int, **more: object) -> None:
    cfg = json.loads((image / "config.json").read_text())
    cfg.update(coordinator_port=port, **more)
    (image / "config.json").write_text(json.dumps(cfg))


async def aiocoap_post(uri: str, payload: bytes, context_dir: Path | None) -> aiocoap.Message:
    ctx = await aiocoap.Context.create_client_context()
    security = None
    if context_dir is not None:
        security = FilesystemSecurityContext(str(context_dir))
        ctx.client_credentials[":meter"] = security
        ctx.client_credentials[uri.rsplit("/", 1)[0] + "/*"] = ":meter"
    try:
        msg = aiocoap.Message(code=Code.POST, uri=uri, payload=payload, content_format=18)
        return await asyncio.wait_for(ctx.request(msg).response, 20)
    finally:
        await ctx.shutdown()
        if security is not None:
            security._destroy()


def test_forged_acks_never_drop_a_reading_and_nothing_travels_in_clear(tmp_path: Path, coordinator_factory,
                                                                       mp_runtime: str) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(STRICT)
    db = tmp_path / "c.db"
    coord = coordinator_factory(db=db, config=config)
    installer = tmp_path / "installer-ctx"
    new_installer_context(tmp_path / "oscore", "alice", installer)
    image = tmp_path / "meter"
    run = flash("--target", f"dir:{image}", "--config", str(meter_config(tmp_path, max_readings=12)),
                "--coordinator", f"127.0.0.1:{coord.port}", "--installer-context", str(installer), "--json")
    assert run.code == 0, run.out + run.err
    context = json.loads((image / "oscore.json").read_text())
    assert context["secret"] not in run.out + run.err  # the master secret is never shown
    assert (image / "oscore.json").stat().st_mode & 0o077 == 0
    check = flash("--check", "--target", f"dir:{image}", "--coordinator", f"127.0.0.1:{coord.port}",
                  "--installer-context", str(installer))
    assert check.code == 0 and "link: OSCORE context in oscore.json" in check.out, check.out + check.err

    with Relay(coord.port) as relay:
        set_port(image, relay.port)
        summary = run_meter(image)
    assert relay.forged >= 24 and relay.withheld >= 12  # every request raced by two forgeries
    assert summary["delivered"] == 12 and summary["rejected"] == 0 and summary["pending"] == 0
    assert stored_seqs(db) == list(range(1, 13))  # nothing dropped, nothing skipped
    # No stored reading (the signed COSE bytes) shows in the capture, not
    # even 12 bytes of one; every request carries the OSCORE option.
    requests = [d for d in relay.captured if (d[0] >> 4) & 3 == 0 and d[1] == 2]
    assert requests and all(b"readings" not in d for d in requests)
    capture = b"".join(relay.captured)
    for cose in stored_cose(db):
        assert all(cose[i:i + 12] not in capture for i in range(0, len(cose) - 12))

    # A captured request replayed to the coordinator: refused, nothing stored.
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(requests[-1], ("127.0.0.1", coord.port))
        answer = s.recv(2048)
    assert answer[1] == 129  # 4.01 (aiocoap: replay detected)
    assert stored_seqs(db) == list(range(1, 13))

    # aiocoap's own OSCORE client, with the context flash made (the
    # meter's side as aiocoap's directory), posts the next reading.
    client_dir = tmp_path / "aiocoap-meter"
    write_context_dir(client_dir, bytes.fromhex(context["secret"]), bytes.fromhex(context["salt"]),
                      bytes.fromhex(context["sender_id"]), bytes.fromhex(context["recipient_id"]))
    # The meter used sequence numbers below its reservation: start above.
    (client_dir / "sequence.json").write_text(json.dumps({"next-to-send": 1000, "received": {"index": 0, "bitfield": 0}}))
    secret = bytes.fromhex((image / "device.key").read_text().strip())
    from microgrid.shared import secp256k1

    pub = secp256k1.public_key(secret)
    msg = reading.build(secret, pub, 13, 1_700_100_000, 10_000, 0, 5.0, 230.0, [])
    uri = f"coap://127.0.0.1:{coord.port}/readings"
    got = asyncio.run(aiocoap_post(uri, msg, client_dir))
    assert got.code == Code.CREATED, got.payload
    assert stored_seqs(db)[-1] == 13
    # The same reading in clear is refused ([link] unprotected_readings = "refuse").
    msg14 = reading.build(secret, pub, 14, 1_700_100_010, 10_001, 0, 5.0, 230.0, [])
    got = asyncio.run(aiocoap_post(uri, msg14, None))
    assert got.code == Code.UNAUTHORIZED
    assert stored_seqs(db)[-1] == 13


def test_a_coordinator_that_lost_its_replay_window_is_recovered_by_echo(tmp_path: Path, coordinator_factory,
                                                                          mp_runtime: str) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(STRICT)
    db = tmp_path / "c.db"
    coord = coordinator_factory(db=db, config=config)
    installer = tmp_path / "installer-ctx"
    new_installer_context(tmp_path / "oscore", "bob", installer)
    image = tmp_path / "meter"
    run = flash("--target", f"dir:{image}", "--config", str(meter_config(tmp_path, max_readings=4)),
                "--coordinator", f"127.0.0.1:{coord.port}", "--installer-context", str(installer), "--json")
    assert run.code == 0, run.out + run.err
    assert run_meter(image)["delivered"] == 4
    coord.kill()  # no clean stop: the replay window on disk says "unknown"
    coord.start()
    set_port(image, coord.port)
    out: list[str] = []
    summary = run_meter(image, out)
    assert "coordinator asked for Echo" in out[0]
    assert summary["delivered"] == 4 and summary["pending"] == 0
    assert stored_seqs(db) == list(range(1, 9))
    seq_files = sorted(p.name for p in image.iterdir() if p.name.startswith("oscore.json.seq"))
    assert seq_files  # sequence reservations on the meter's flash


def test_a_meter_the_coordinator_has_no_context_for_keeps_every_reading(tmp_path: Path, coordinator_factory,
                                                                          mp_runtime: str) -> None:
    db = tmp_path / "c.db"
    coord = coordinator_factory(db=db)
    installer = tmp_path / "installer-ctx"
    new_installer_context(tmp_path / "oscore", "dave", installer)
    image = tmp_path / "meter"
    run = flash("--target", f"dir:{image}", "--config",
                str(meter_config(tmp_path, max_readings=3, max_retransmit=1, drain_timeout_s=1.5)),
                "--coordinator", f"127.0.0.1:{coord.port}", "--installer-context", str(installer), "--json")
    assert run.code == 0, run.out + run.err
    # The board's context is unknown at the coordinator (another secret
    # under the same kid: as after a coordinator restored without its
    # contexts): its unprotected 4.01s are ignored, nothing is dropped.
    context = json.loads((image / "oscore.json").read_text())
    (image / "oscore.json").write_text(json.dumps(dict(context, secret="00" * 16)))
    out: list[str] = []
    summary = run_meter(image, out)
    assert summary["delivered"] == 0 and summary["rejected"] == 0 and summary["pending"] == 3
    assert "ignored, not protected for this request" in out[0]
    assert stored_seqs(db) == []
    assert "00" * 16 not in out[0]
