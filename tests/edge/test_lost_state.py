"""A meter that lost its state (journal and outbox gone: flash wiped, a new
filesystem, a board swapped with the key restored) numbers its readings
from 1 again. The real coordinator answers 4.09 stale with where it stands;
the firmware renumbers above it (edge/resync.py) and no reading is dropped.
Real firmware in both MicroPython runtimes, real coordinator over UDP."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from microgrid.flash.unix_port import boot

from ..conftest import free_udp_port, meter_summary
from ..e2e.test_meter_to_coordinator import assert_all_verify, provision, stored_rows


def set_config(image: Path, **changes: object) -> None:
    cfg = json.loads((image / "config.json").read_text())
    cfg.update(changes)
    (image / "config.json").write_text(json.dumps(cfg))


def wipe_state(image: Path) -> None:
    """What a wiped filesystem leaves: config and key, no journal, no outbox."""
    gone = 0
    for path in image.iterdir():
        # The journal (state, state.0, state.1) and the outbox (outbox, outbox.d/).
        if path.name.startswith(("state", "outbox")):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            gone += 1
    assert gone, "nothing to wipe: the journal and outbox file names changed?"


def run_to_end(image: Path) -> tuple[dict, str]:
    meter = boot(image)
    out, _ = meter.communicate(timeout=120)
    assert meter.returncode == 0, out[-3000:]
    return meter_summary(out), out


def extra(row: dict) -> dict:
    return json.loads(row["extra"]) if row.get("extra") else {}


@pytest.mark.parametrize("batch_size", [1, 4])
def test_after_losing_state_every_reading_is_stored_above_the_coordinator(tmp_path: Path, coordinator_factory,
                                                                         batch_size: int) -> None:
    db = tmp_path / "c.db"
    port = free_udp_port()
    # The load profile at night: a host-counted import that grows every reading.
    image, pub = provision(tmp_path, db, port, max_readings=20, clock_start=1_700_000_000, clock_speed=3600,
                           batch_size=batch_size, meter={"type": "simulated", "profile": "load", "seed": 3})
    coordinator_factory(db=db, port=port)
    first, _ = run_to_end(image)
    before = stored_rows(db, pub)
    assert first["last_seq"] == 20 and len(before) == 20
    wipe_state(image)
    # Later in (simulated) time, as a real reboot would be.
    set_config(image, max_readings=12, clock_start=1_700_100_000)
    summary, out = run_to_end(image)
    # (`delivered` counts messages: a batch is one.)
    assert summary["rejected"] == 0 and summary["pending"] == 0 and summary["produced"] == 12, summary
    assert " rejected 4." not in out and "Traceback" not in out, out[-3000:]
    assert out.count("sequence behind the coordinator (last stored 20)") == 1, out[-3000:]
    rows = stored_rows(db, pub)
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(set(seqs)) and len(rows) == 32
    new = rows[20:]
    assert new[0]["seq"] == 21 and summary["last_seq"] == seqs[-1]
    # The host counters started again from 0: the first reading above the
    # coordinator says so, with the coordinator's totals as the old ones.
    assert new[0]["import_wh"] < before[-1]["import_wh"]
    assert extra(new[0])["reset"] == "counter_dropped"
    assert extra(new[0])["reset_import_wh"] == before[-1]["import_wh"]
    assert extra(new[0])["reset_export_wh"] == before[-1]["export_wh"]
    assert all("reset" not in extra(r) for r in new[1:])
    assert [r["import_wh"] for r in new] == sorted(r["import_wh"] for r in new)
    if batch_size == 1:
        assert_all_verify(rows, pub)
    # The jump is in the journal: the next boot continues above it.
    set_config(image, max_readings=3, clock_start=1_700_200_000)
    again, out = run_to_end(image)
    assert again["rejected"] == 0 and "sequence behind" not in out
    later = [r["seq"] for r in stored_rows(db, pub)][32:]
    assert len(later) == 3 and min(later) > seqs[-1]


def test_lost_state_while_the_coordinator_is_away_and_a_power_cut_mid_renumbering(tmp_path: Path, coordinator_factory) -> None:
    """Readings buffered from seq 1 while offline, renumbered when the
    coordinator answers, the meter killed just after the jump: every
    reading is stored once, numbers strictly increasing, none rejected."""
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, max_readings=10, clock_speed=3600,
                           meter={"type": "simulated", "profile": "load", "seed": 5})
    coordinator = coordinator_factory(db=db, port=port)
    run_to_end(image)
    coordinator.stop()
    wipe_state(image)
    # A simulated clock that follows real time, across the reboot too.
    set_config(image, max_readings=0, clock_start=1_700_100_000, clock_origin=int(time.time()), interval_s=0.01,
               ack_timeout_s=0.05,
               max_retransmit=0, retry_after_s=0.05, log_level="debug")
    # Offline: readings pile up in the outbox numbered from 1.
    meter = boot(image)
    assert meter.stdout is not None
    deadline = time.time() + 60
    while time.time() < deadline and "reading seq 8 " not in meter.stdout.readline():
        pass
    coordinator_factory(db=db, port=port)
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = meter.stdout.readline()
        lines.append(line)
        if "sequence behind" in line or not line:
            break
    # Power cut right after the jump was saved, before (most) renumbered
    # readings went out.
    meter.send_signal(signal.SIGKILL)
    meter.communicate(timeout=10)
    assert "sequence behind the coordinator (last stored 10)" in lines[-1], "".join(lines[-20:])
    set_config(image, max_readings=5, log_level="info")
    summary, out = run_to_end(image)
    assert summary["rejected"] == 0 and summary["pending"] == 0, summary
    assert "sequence behind" not in out, out[-3000:]
    rows = stored_rows(db, pub)
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(set(seqs)) and seqs[:10] == list(range(1, 11))
    # Every reading made after the wipe is there: 8+ buffered, 5 more.
    assert len(rows) >= 10 + 8 + 5
    assert sum("reset" in extra(r) for r in rows) == 1 and extra(rows[10])["reset"] == "counter_dropped"
    times = [r["time"] for r in rows[10:]]
    assert times == sorted(times)
    assert_all_verify(rows, pub)


class FakeCoordinator:
    """Answers every POST on 127.0.0.1:port with one fixed 4.09 (piggybacked
    on the ACK), as a coordinator gone wrong, or a forger who got the
    exchange right, would."""

    def __init__(self, port: int, answer: bytes) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.answer = answer
        self.requests = 0
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while self.running:
            try:
                data, addr = self.sock.recvfrom(2048)
            except OSError:
                continue
            self.requests += 1
            tkl = data[0] & 15
            self.sock.sendto(bytes([0x60 | tkl, 0x89]) + data[2:4] + data[4:4 + tkl] + b"\xff" + self.answer, addr)

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("answer", [
    pytest.param(b"stale: seq 1 is not above last stored 536870912; last=536870912 import=0 export=0", id="beyond-bound"),
    pytest.param(b"stale: seq 1 is not above last stored 0; last=0 import=0 export=0", id="not-stale"),
])
def test_an_answer_out_of_bounds_moves_nothing_and_drops_nothing(tmp_path: Path, answer: bytes) -> None:
    port = free_udp_port()
    image, _ = provision(tmp_path, tmp_path / "unused.db", port, max_readings=3, interval_s=0.01, ack_timeout_s=0.1,
                         retry_after_s=0.02, drain_timeout_s=1.5)
    fake = FakeCoordinator(port, answer)
    try:
        summary, out = run_to_end(image)
    finally:
        fake.close()
    # Kept, retried, never renumbered: the sequence is where it was.
    assert fake.requests >= 3
    assert summary["pending"] == 3 and summary["rejected"] == 0 and summary["last_seq"] == 3, summary
    assert summary["errors"]["rejected"] >= 2 and "kept, will retry" in out
    assert "sequence behind" not in out
    # The journal holds no jump either: the next boot numbers on from 3.
    again = boot(image)
    assert again.stdout is not None
    first_line = again.stdout.readline()
    again.kill()
    again.communicate(timeout=10)
    assert "next seq 4, 3 buffered" in first_line, first_line
