"""A meter updates over the air from its coordinator, end to end: the real
firmware in the MicroPython unix port (both runtimes), the real
coordinator process with [updates] serving a `microgrid release` made
release over CoAP Block2. The meter switches slots, reboots, confirms after
its readings are acknowledged, and no reading is lost or stored twice."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

from microgrid.cli import main as cli_main
from microgrid.flash.unix_port import boot
from microgrid.shared import reading, secp256k1

from ..conftest import free_udp_port
from .test_meter_to_coordinator import assert_all_verify, provision, stored_rows


def stand_in_image(version: str, size: int, seed: int) -> bytes:
    head = b"MGFW " + json.dumps({"version": version}).encode() + b"\n"
    return head + random.Random(seed).randbytes(size - len(head))


def test_meter_updates_confirms_and_keeps_every_reading(tmp_path: Path, coordinator_factory, mp_runtime: str) -> None:
    key_file = tmp_path / "release.key"
    assert cli_main(["release", "--new-key", str(key_file)]) == 0
    pub = secp256k1.public_key(bytes.fromhex(key_file.read_text().strip()))
    new = stand_in_image("0.3.0", 13_000, 2)
    (tmp_path / "fw.bin").write_bytes(new)
    releases = tmp_path / "releases"
    assert cli_main(["release", "--key", str(key_file), "--image", str(tmp_path / "fw.bin"), "--version", "0.3.0",
                     "--board", "unix", "--min-version", "0.2.0", "--out", str(releases)]) == 0
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[updates]\nenabled = true\nrelease_keys = ["{pub.hex()}"]\nboard = "unix"\n'
                      f'folder = "{releases}"\n')
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, meter_pub = provision(tmp_path, db, port, max_readings=25, interval_s=0.02,
                                 updates={"board": "unix", "keys": [pub.hex()]})
    (image / "ota_0.bin").write_bytes(stand_in_image("0.2.0", 9_000, 1))  # as flashed
    coordinator = coordinator_factory(db=db, port=port, config=config)
    outputs = []
    codes = []
    for _ in range(8):
        meter = boot(image, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = meter.communicate(timeout=120)
        outputs.append(out)
        codes.append(meter.returncode)
        assert meter.returncode in (0, 3), out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        if "confirmed" in "".join(outputs) and not (image / "ota.json").exists():
            break  # confirmed and reported
    log = "".join(outputs)
    assert 3 in codes, log[-2500:]  # the switch rebooted the board
    assert "update to 0.3.0 accepted" in log and "switching to 0.3.0" in log, log[-3000:]
    assert "running 0.3.0 confirmed" in log, log[-3000:]
    last = json.loads((image / "ota.last").read_text())
    assert last["installed"] == {"version": "0.3.0", "from": "0.2.0"}
    assert json.loads((image / "otadata").read_text()) == {"boot": "ota_1", "state": {"ota_0": "valid",
                                                                                       "ota_1": "valid"}}
    assert (image / "ota_1.bin").read_bytes()[:len(new)] == new
    # Every reading across the update stored once, in order, verifying.
    rows = stored_rows(db, meter_pub)
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 25
    assert_all_verify(rows, meter_pub)
    # The meter told the coordinator, signed with its device key.
    assert f"meter {reading.device_id(meter_pub)} runs 0.3.0" in coordinator.log_path.read_text()
