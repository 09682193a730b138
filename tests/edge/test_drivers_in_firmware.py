"""Real drivers inside the real firmware loop under the unix port, with
the scripted hardware layer replaying recorded frames from the image's
hal_script.json: readings carry the driver's values to the coordinator,
and a meter that stops answering is counted and retried, never fatal."""

from __future__ import annotations

import json
from pathlib import Path

from microgrid.flash.unix_port import boot

from ..conftest import free_udp_port, meter_summary
from ..e2e.test_meter_to_coordinator import assert_all_verify, provision, stored_rows
from .mp import fixture


def test_pzem004t_readings_reach_the_coordinator_with_current_frequency_and_pf(tmp_path: Path, coordinator_factory) -> None:
    fx = fixture("pzem004t.json")
    valid = fx["cases"][0]["replies"][0]
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, max_readings=8, interval_s=0.01,
                           meter={"type": "pzem004t", "uart": {"id": 2}})
    (image / "hal_script.json").write_text(json.dumps({"uart": {"2": {"replies": [valid], "repeat": True}}}))
    coordinator_factory(db=db, port=port)
    out, _ = boot(image).communicate(timeout=60)
    summary = meter_summary(out)
    assert summary["delivered"] == 8 and summary["errors"]["meter"] == 0, out
    rows = stored_rows(db, pub)
    assert [r["import_wh"] for r in rows] == [123456] * 8
    assert rows[0]["power_w"] == 994.3 and rows[0]["voltage_v"] == 230.1
    assert json.loads(rows[0]["extra"]) == {"current": 4.321, "frequency": 50.0, "power_factor": 0.99}
    assert_all_verify(rows, pub)


def test_a_silent_or_corrupt_meter_is_counted_and_retried_without_ending_the_loop(tmp_path: Path, coordinator_factory) -> None:
    fx = fixture("pzem004t.json")
    valid = fx["cases"][0]["replies"][0]
    corrupt = fx["cases"][4]["replies"][0]
    db = tmp_path / "c.db"
    port = free_udp_port()
    # Two good reads, then six failed exchanges (three failed reads with
    # one retry each: silence, corruption), then good again.
    replies = [valid, valid, None, None, corrupt, corrupt, None, corrupt] + [valid] * 20
    image, pub = provision(tmp_path, db, port, max_readings=5, interval_s=0.01,
                           meter={"type": "pzem004t", "uart": {"id": 2}, "timeout_ms": 20})
    (image / "hal_script.json").write_text(json.dumps({"uart": {"2": {"replies": replies}}}))
    coordinator_factory(db=db, port=port)
    out, _ = boot(image).communicate(timeout=60)
    summary = meter_summary(out)
    assert summary["produced"] == 5 and summary["delivered"] == 5, out
    assert summary["errors"]["meter"] == 3
    assert out.count("meter read failed") == 3 and "no reply within 20 ms" in out and "CRC" in out
    assert [r["seq"] for r in stored_rows(db, pub)] == [1, 2, 3, 4, 5]


def test_s0_pulses_counted_while_the_firmware_signs_and_sends_all_reach_the_coordinator(tmp_path: Path, coordinator_factory) -> None:
    # 30 pulses in the first 1.4 s after boot, while the firmware builds its
    # key tables, signs and sends: the pulse counter (and the hard IRQ
    # taking their times, with the heap locked) sees every one, and the
    # firmware's idle passes fold the counter into the total.
    edges = []
    for k in range(30):
        t = 200 + 40 * k
        edges += [[t, 0], [t + 20, 1]]
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, max_readings=6, interval_s=0.5, meter={"type": "s0", "pin": 4})
    (image / "hal_script.json").write_text(json.dumps({"pin": {"4": {"edges": edges, "level": 1}}}))
    coordinator_factory(db=db, port=port)
    out, _ = boot(image).communicate(timeout=60)
    summary = meter_summary(out)
    assert summary["delivered"] == 6 and summary["errors"]["meter"] == 0, out
    rows = stored_rows(db, pub)
    imports = [r["import_wh"] for r in rows]
    assert imports == sorted(imports) and imports[-1] == 30, imports
    assert_all_verify(rows, pub)
