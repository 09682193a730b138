"""Power loss and long outages, end to end: the real firmware under the
MicroPython unix port, the real coordinator over UDP on 127.0.0.1.

- SIGKILL at random points, hundreds of times: the stored stream has no
  repeated or missing sequence number, counters never go backwards, and
  every reading verifies (nothing acknowledged or buffered was lost).
- The coordinator away for a simulated day: every buffered reading
  arrives once it is back, and the stored total equals the meter's."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from microgrid.flash.unix_port import boot

from ..conftest import free_udp_port, meter_summary
from ..e2e.test_meter_to_coordinator import assert_all_verify, provision, stored_rows

POWER_CUTS = int(os.environ.get("MICROGRID_POWER_CUTS", "200"))


def test_sigkill_at_random_points_never_repeats_loses_or_rewinds(tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, interval_s=0.01, persist_every=7, ack_timeout_s=0.1,
                           retry_after_s=0.05, max_readings=0, log_level="debug")
    coordinator_factory(db=db, port=port)
    rng = random.Random(6)
    outputs = []
    streaming = 0
    for i in range(POWER_CUTS):
        meter = boot(image, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert meter.stdout is not None
        # Cut relative to what the firmware is doing, not to the process
        # start (start-up time varies with load): one cut in four soon after
        # it is up (its first log line), the others soon after it made a
        # reading, so most cuts fall among the writes of a reading and its
        # sending, whatever the machine's speed.
        head = [meter.stdout.readline()]
        if i % 4:
            streaming += 1
            deadline = time.monotonic() + 30
            while "reading seq" not in head[-1] and head[-1] and time.monotonic() < deadline:
                head.append(meter.stdout.readline())
            assert "reading seq" in head[-1], "".join(head[-20:])  # it makes readings again after every cut
        time.sleep(rng.uniform(0.0, 0.1))
        meter.send_signal(signal.SIGKILL)
        out, _ = meter.communicate(timeout=10)
        outputs.append("".join(head) + out)
    # Power back for good: produce a few more and drain everything.
    image_cfg = (image / "config.json").read_text().replace('"max_readings": 0', '"max_readings": 5')
    (image / "config.json").write_text(image_cfg)
    meter = boot(image)
    out, _ = meter.communicate(timeout=120)
    summary = meter_summary(out)
    assert summary["pending"] == 0 and summary["rejected"] == 0, summary
    for o in outputs:
        assert "rejected" not in o and "Traceback" not in o, o[-2000:]
    rows = stored_rows(db, pub)
    seqs = [r["seq"] for r in rows]
    # Every reading ever numbered was stored, once, with no gap.
    assert seqs == list(range(1, summary["last_seq"] + 1))
    # The cuts really fell while readings were being made, not only at boot.
    mid_stream = sum("reading seq" in o for o in outputs)
    assert mid_stream >= streaming >= POWER_CUTS // 2, (mid_stream, streaming)
    for key in ("import_wh", "export_wh"):
        values = [r[key] for r in rows]
        assert values == sorted(values), key
    assert rows[-1]["import_wh"] == summary["import_wh"]
    assert_all_verify(rows, pub)


def test_a_day_without_the_coordinator_delivers_every_reading_and_all_energy(tmp_path: Path, coordinator_factory) -> None:
    readings = 1440  # one simulated day of one-minute readings
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, interval_s=0.004, clock_speed=15000, max_readings=readings,
                           ack_timeout_s=0.02, max_retransmit=0, retry_after_s=0.05, drain_timeout_s=120,
                           log_level="debug")
    meter = boot(image)
    assert meter.stdout is not None
    lines = []
    deadline = time.time() + 90
    while time.time() < deadline:
        line = meter.stdout.readline()
        lines.append(line)
        if f"reading seq {readings} " in line or not line:
            break
    assert f"reading seq {readings} " in lines[-1], "".join(lines[-20:])
    assert stored_rows(db, pub) == []
    coordinator_factory(db=db, port=port)
    out, _ = meter.communicate(timeout=120)
    summary = meter_summary(out)
    assert summary["produced"] == readings and summary["pending"] == 0 and summary["dropped"] == 0, summary
    rows = stored_rows(db, pub)
    assert [r["seq"] for r in rows] == list(range(1, readings + 1))
    # The simulated day really spans a day, and the stored energy is the meter's.
    assert rows[-1]["time"] - rows[0]["time"] >= 86400 * 0.9
    assert rows[-1]["import_wh"] == summary["import_wh"] and rows[-1]["export_wh"] == summary["export_wh"]
    deltas = sum(b["import_wh"] - a["import_wh"] for a, b in zip(rows, rows[1:]))
    assert rows[0]["import_wh"] + deltas == summary["import_wh"] > 0
