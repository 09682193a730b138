"""`microgrid flash --target dir:PATH`: the image the installer's command
makes boots in the MicroPython unix port, is registered with a running
coordinator and sends readings that verify, with no hand steps; flashing
again changes nothing but what was asked."""

from __future__ import annotations

import json
from pathlib import Path

from bitcoinx import PublicKey

from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.flash.unix_port import boot
from microgrid.shared import reading, secp256k1

from ..conftest import meter_summary
from .helpers import coordinator_config, flash, meter_config, token_file


def stored(db: Path) -> tuple[list, list[dict]]:
    store = ReadingStore(open_database(db))
    try:
        return store.devices(), list(store.readings())
    finally:
        store.db.close()


def assert_verify(rows: list[dict], public_key: bytes) -> None:
    key = PublicKey.from_bytes(public_key)
    for row in rows:
        r = reading.parse(row["cose"])
        assert key.verify_der_signature(secp256k1.der_signature(r.message.signature), r.message.to_be_signed())


def run_meter(image: Path, readings: int) -> dict:
    cfg = json.loads((image / "config.json").read_text())
    assert cfg.get("max_readings") == readings
    meter = boot(image)
    out, _ = meter.communicate(timeout=120)
    assert meter.returncode == 0, out
    return meter_summary(out)


def test_flashed_folder_boots_registers_and_sends_verified_readings(tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    coord = coordinator_factory(db=db, config=coordinator_config(tmp_path))
    image = tmp_path / "meter1"
    run = flash("--target", f"dir:{image}", "--config", str(meter_config(tmp_path, max_readings=25)),
                "--coordinator", f"127.0.0.1:{coord.port}", "--token-file", str(token_file(tmp_path)), "--json")
    assert run.code == 0, run.out + run.err
    result = run.result
    assert result["key_made"] == "board" and result["registered"] == "new"
    # Progress: every step announced, public key and key id printed.
    for step in ("connect", "check config", "build image", "write files", "device key", "register", "verify"):
        assert f"] {step} ..." in run.out
    assert result["public_key"] in run.out and result["device_id"] in run.out
    # The image is compiled: .mpy beside main.py, no firmware .py left.
    assert (image / "shared" / "secp256k1.mpy").exists() and not (image / "shared" / "secp256k1.py").exists()
    devices, _ = stored(db)
    assert [(d.device_id, d.public_key.hex(), d.name) for d in devices] == [
        (result["device_id"], result["public_key"], "flat-3")]
    check = flash("--check", "--target", f"dir:{image}", "--token-file", str(token_file(tmp_path)))
    assert check.code == 0 and "check passed" in check.out, check.out
    assert f"registered at coap://127.0.0.1:{coord.port}/devices as 'flat-3'" in check.out
    summary = run_meter(image, 25)
    assert summary["device"] == result["device_id"] and summary["delivered"] == 25 and summary["rejected"] == 0
    coord.stop()
    _, rows = stored(db)
    assert [r["seq"] for r in rows] == list(range(1, 26))
    assert_verify(rows, bytes.fromhex(result["public_key"]))
    # The private key never left the folder: not in anything printed.
    secret = (image / "device.key").read_text().strip()
    assert secret not in run.out + run.err
    assert (image / "device.key").stat().st_mode & 0o077 == 0


def test_flashing_twice_is_idempotent_and_a_changed_config_keeps_key_and_counters(tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    coord = coordinator_factory(db=db, config=coordinator_config(tmp_path))
    image = tmp_path / "meter1"
    common = ["--target", f"dir:{image}", "--coordinator", f"127.0.0.1:{coord.port}",
              "--token-file", str(token_file(tmp_path)), "--json"]
    first = flash(*common, "--config", str(meter_config(tmp_path, max_readings=12)))
    assert first.code == 0, first.err
    run_meter(image, 12)
    snapshot = {p.relative_to(image).as_posix(): p.read_bytes() for p in image.rglob("*") if p.is_file()}
    assert "state.0" in snapshot and "outbox.d/0" in snapshot

    again = flash(*common)  # no config given: the folder's is kept
    assert again.code == 0, again.err
    assert again.result["files_written"] == 0 and again.result["registered"] == "known"
    assert again.result["key_made"] == "kept" and again.result["public_key"] == first.result["public_key"]
    assert {p.relative_to(image).as_posix(): p.read_bytes() for p in image.rglob("*") if p.is_file()} == snapshot

    changed = flash(*common, "--set", "interval_s=0.02", "--set", "max_readings=8", "--name", "flat-3b")
    assert changed.code == 0, changed.err
    assert changed.result["files_written"] == 1 and changed.result["public_key"] == first.result["public_key"]
    cfg = json.loads((image / "config.json").read_text())
    assert cfg["interval_s"] == 0.02 and cfg["device_name"] == "flat-3b" and cfg["meter"]["seed"] == 5
    for own in ("device.key", "state.0", "state.1", "outbox.d/0"):
        if own in snapshot:
            assert (image / own).read_bytes() == snapshot[own], own
    run_meter(image, 8)
    coord.stop()
    devices, rows = stored(db)
    assert len(devices) == 1
    # The sequence continued: 12 readings, then 8 more, no number reused.
    assert [r["seq"] for r in rows] == list(range(1, 21))
    imports = [r["import_wh"] for r in rows]
    assert imports == sorted(imports)
    assert_verify(rows, bytes.fromhex(first.result["public_key"]))
