"""Batching and power cuts (edge/README.md, "Batching"): readings waiting in
RAM for their batch are lost at a cut as points in time, never their
energy. With a driver that counts in the host (the simulated meter, like S0
and CT) the firmware journals the sequence and counters with every reading,
so after each cut the counters continue from the last reading made, not
from the last batch sent. SIGKILL at random points, batch_size 4, the real
coordinator over UDP, both MicroPython runtimes."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from pathlib import Path

from microgrid.flash.unix_port import boot

from ..conftest import free_udp_port, meter_summary
from bitcoinx import PublicKey

from microgrid.shared import reading, secp256k1

from ..e2e.test_meter_to_coordinator import provision, stored_rows

CUTS = 25
MADE = re.compile(r"reading seq (\d+) import (\d+) Wh export (\d+) Wh")


def set_config(image: Path, **changes: object) -> None:
    cfg = json.loads((image / "config.json").read_text())
    cfg.update(changes)
    (image / "config.json").write_text(json.dumps(cfg))


def made(output: str) -> list[tuple[int, int, int]]:
    """(seq, import, export) of every reading the meter logged as made."""
    return [(int(a), int(b), int(c)) for a, b, c in MADE.findall(output)]


def test_a_power_cut_mid_batch_loses_points_but_no_counted_energy(tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    port = free_udp_port()
    # At night the load profile imports 300 W and more: 3+ Wh per reading
    # (36 simulated seconds), so a lost counter shows in whole Wh. Each boot
    # starts its simulated clock an hour after the last.
    image, pub = provision(tmp_path, db, port, batch_size=4, interval_s=0.01, clock_start=1_700_000_000,
                           clock_speed=3600, persist_every=10, max_readings=0,
                           ack_timeout_s=0.1, retry_after_s=0.05, log_level="debug",
                           meter={"type": "simulated", "profile": "load", "seed": 4})
    coordinator_factory(db=db, port=port)
    rng = random.Random(12)
    runs = []
    for k in range(CUTS):
        set_config(image, clock_start=1_700_000_000 + 3600 * k)
        meter = boot(image, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert meter.stdout is not None
        lines = [meter.stdout.readline()]
        # Cut once the firmware makes readings, at a random phase of a batch.
        deadline = time.time() + 30
        while time.time() < deadline and not MADE.search(lines[-1]) and lines[-1]:
            lines.append(meter.stdout.readline())
        time.sleep(rng.uniform(0.0, 0.06))
        meter.send_signal(signal.SIGKILL)
        out, _ = meter.communicate(timeout=10)
        runs.append("".join(lines) + out)
    set_config(image, max_readings=6, clock_start=1_700_000_000 + 3600 * CUTS)
    meter = boot(image)
    out, _ = meter.communicate(timeout=120)
    runs.append(out)
    summary = meter_summary(out)
    assert summary["pending"] == 0 and summary["rejected"] == 0, summary
    for o in runs:
        assert "Traceback" not in o and " rejected 4." not in o, o[-2000:]
    # After every cut the counters continue from the last reading made
    # before it: the energy counted into a batch that never went out is kept.
    lost_points = 0
    for before, after in zip(runs, runs[1:]):
        last, first = made(before), made(after)
        assert last and first, (before[-1500:], after[-1500:])
        assert first[0][1] >= last[-1][1] and first[0][2] >= last[-1][2], (last[-1], first[0])
        assert first[0][0] > last[-1][0], "a sequence number was reused"
        lost_points += first[0][0] - last[-1][0] - 1
    rows = stored_rows(db, pub)
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(set(seqs))
    # The waiting readings were lost as points (numbers skipped): the cuts
    # really fell mid-batch.
    made_seqs = {s for o in runs for s, _, _ in made(o)}
    unsent = made_seqs - set(seqs)
    assert len(unsent) >= CUTS // 3, (len(unsent), lost_points)
    for key in ("import_wh", "export_wh"):
        values = [r[key] for r in rows]
        assert values == sorted(values), key
    assert rows[-1]["import_wh"] == summary["import_wh"] > 0
    key = PublicKey.from_bytes(pub)
    for row in rows:
        batch = reading.parse_all(row["cose"])
        assert row["seq"] in [r.seq for r in batch]
        der = secp256k1.der_signature(batch[0].message.signature)
        assert key.verify_der_signature(der, batch[0].message.to_be_signed()), row["seq"]
