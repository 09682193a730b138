"""The real firmware, in the MicroPython unix port, sends signed readings
over UDP on 127.0.0.1 to the real coordinator process, which verifies and
stores them: every reading produced is stored exactly once and verifies."""

from __future__ import annotations

import subprocess
import time

import pytest
from pathlib import Path

from bitcoinx import PrivateKey, PublicKey

from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.flash.image import write_image
from microgrid.flash.unix_port import boot
from microgrid.shared import reading, secp256k1

from ..conftest import free_udp_port, meter_summary


def provision(tmp_path: Path, db: Path, port: int, **config: object) -> tuple[Path, bytes]:
    key = PrivateKey.from_random()
    pub = key.public_key.to_bytes(compressed=True)
    store = ReadingStore(open_database(db))
    store.register_device(pub, "meter-under-test")
    store.db.close()
    cfg = {
        "device_name": "meter-under-test",
        "coordinator_port": port,
        "interval_s": 0.005,
        "clock_start": 1_700_000_000,
        "clock_speed": 60,
        "ack_timeout_s": 0.2,
        "retry_after_s": 0.2,
        "meter": {"type": "simulated", "profile": "prosumer", "seed": 3},
    }
    cfg.update(config)
    return write_image(tmp_path / "image", cfg, key.to_bytes()), pub


def stored_rows(db: Path, pub: bytes) -> list[dict]:
    store = ReadingStore(open_database(db))
    rows = list(store.readings(reading.device_id(pub)))
    store.db.close()
    return rows


def assert_all_verify(rows: list[dict], pub: bytes) -> None:
    key = PublicKey.from_bytes(pub)
    for row in rows:
        r = reading.parse(row["cose"])
        assert r.seq == row["seq"] and r.import_wh == row["import_wh"]
        der = secp256k1.der_signature(r.message.signature)
        assert key.verify_der_signature(der, r.message.to_be_signed()), row["seq"]


def test_200_readings_from_micropython_are_stored_once_and_verify(tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, max_readings=200)
    coordinator = coordinator_factory(db=db, port=port)
    meter = boot(image)
    out, _ = meter.communicate(timeout=120)
    assert meter.returncode == 0, out
    summary = meter_summary(out)
    assert summary["produced"] == 200 and summary["delivered"] == 200 and summary["pending"] == 0
    coordinator.stop()
    rows = stored_rows(db, pub)
    assert [r["seq"] for r in rows] == list(range(1, 201))
    assert_all_verify(rows, pub)
    # Counters only ever increase.
    imports = [r["import_wh"] for r in rows]
    exports = [r["export_wh"] for r in rows]
    assert imports == sorted(imports) and exports == sorted(exports)


@pytest.mark.parametrize("how", ["kill", "terminate"])
def test_stopped_coordinator_loses_no_reading(tmp_path: Path, coordinator_factory, how: str) -> None:
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, max_readings=150, interval_s=0.02, drain_timeout_s=60)
    coordinator = coordinator_factory(db=db, port=port)
    meter = boot(image)
    # Let some readings through, then kill -9 the coordinator mid-stream.
    deadline = time.time() + 30
    while time.time() < deadline and len(stored_rows(db, pub)) < 40:
        time.sleep(0.05)
    if how == "kill":
        coordinator.kill()
    else:
        # SIGTERM: a graceful stop, exit status 0, nothing acknowledged lost.
        coordinator.stop()
        assert coordinator.proc.returncode == 0
    stored_before = len(stored_rows(db, pub))
    assert 40 <= stored_before < 150
    time.sleep(1.0)  # the meter retransmits into the void and buffers
    coordinator_factory(db=db, port=port)
    out, _ = meter.communicate(timeout=120)
    summary = meter_summary(out)
    assert summary["produced"] == 150 and summary["pending"] == 0 and summary["rejected"] == 0, summary
    rows = stored_rows(db, pub)
    assert [r["seq"] for r in rows] == list(range(1, 151))
    assert_all_verify(rows, pub)


def test_unregistered_meter_is_refused_and_gives_up_cleanly(tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, max_readings=5)
    # A different database: this coordinator never heard of the meter.
    other_db = tmp_path / "other.db"
    coordinator_factory(db=other_db, port=port)
    meter = boot(image)
    out, _ = meter.communicate(timeout=60)
    summary = meter_summary(out)
    assert summary["rejected"] == 5 and summary["delivered"] == 0
    assert "4.01" in out and "unknown device" in out
    assert stored_rows(other_db, pub) == []


def test_meter_restart_continues_the_sequence(tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, max_readings=25, persist_every=10)
    coordinator_factory(db=db, port=port)
    for _ in range(2):
        meter = boot(image)
        out, _ = meter.communicate(timeout=60)
        assert meter_summary(out)["delivered"] == 25, out
    rows = stored_rows(db, pub)
    seqs = [r["seq"] for r in rows]
    assert len(seqs) == 50 and seqs == sorted(set(seqs))
    imports = [r["import_wh"] for r in rows]
    assert imports == sorted(imports)


def test_batching_signs_once_per_message_and_stores_every_reading(tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, max_readings=31, batch_size=3)
    coordinator_factory(db=db, port=port)
    meter = boot(image)
    out, _ = meter.communicate(timeout=120)
    summary = meter_summary(out)
    assert summary["produced"] == 31 and summary["pending"] == 0, summary
    rows = stored_rows(db, pub)
    assert [r["seq"] for r in rows] == list(range(1, 32))
    messages = {r["cose"] for r in rows}
    assert len(messages) == 11  # ten batches of three and the last reading alone
    key = PublicKey.from_bytes(pub)
    for m in messages:
        batch = reading.parse_all(m)
        der = secp256k1.der_signature(batch[0].message.signature)
        assert key.verify_der_signature(der, batch[0].message.to_be_signed())
