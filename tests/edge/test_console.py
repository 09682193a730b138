"""The technician console of the real firmware under the MicroPython unix
port: commands piped into stdin and typed through a pseudo-terminal while
the meter keeps measuring and sending; bad input gets one-line errors; a
factory reset asks first, then sends the old totals as signed evidence."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

from microgrid.flash.image import write_image
from microgrid.flash.unix_port import boot

from ..conftest import free_udp_port, meter_summary
from ..e2e.test_meter_to_coordinator import assert_all_verify, provision, stored_rows
from .mp import fixture


def console_image(tmp_path: Path, coordinator_factory, **cfg: object) -> tuple[Path, bytes, Path]:
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, console=True, interval_s=0.05, max_readings=0, **cfg)
    coordinator_factory(db=db, port=port)
    return image, pub, db


def run_piped(image: Path, commands: list[str], pause: float = 0.3) -> tuple[str, int]:
    meter = boot(image, stdin=subprocess.PIPE)
    assert meter.stdin is not None
    for c in commands:
        meter.stdin.write(c + "\n")
        meter.stdin.flush()
        time.sleep(pause)
    out, _ = meter.communicate(timeout=60)
    return out, meter.returncode


def test_piped_commands_answer_while_the_meter_keeps_sending(tmp_path: Path, coordinator_factory) -> None:
    image, pub, db = console_image(tmp_path, coordinator_factory)
    out, code = run_piped(image, ["help", "status", "reading", "pubkey", "config get interval_s",
                                  "config get meter.profile", "selftest", "log 3", "status", "reboot"])
    assert code == 3, out  # reboot under the unix port: exit status 3
    assert "config show | config get KEY" in out, out
    assert "firmware 0.2.0" in out and "link up" in out and "free memory" in out, out
    assert "import " in out and "power " in out and "voltage " in out, out
    assert pub.hex() in out, out
    assert "interval_s = 0.05" in out and 'meter.profile = "prosumer"' in out, out
    assert "selftest passed" in out and "PASS signature" in out, out
    assert "rebooting" in out, out
    summary = meter_summary(out)
    assert summary["produced"] >= 10 and summary["rejected"] == 0, out
    # The meter measured and delivered all along.
    assert summary["delivered"] > 5 and len(stored_rows(db, pub)) >= summary["delivered"], out


def test_bad_commands_and_values_get_one_line_errors_and_nothing_changes(tmp_path: Path, coordinator_factory) -> None:
    image, _, _ = console_image(tmp_path, coordinator_factory)
    before = json.loads((image / "config.json").read_text())
    out, code = run_piped(image, ["frobnicate", "config", "config get nosuch", "config set interval_s -3",
                                  "config set coordinator_port 70000", "config set meter.type pzem017",
                                  "config set nosuch 1", "calibrate", "calibrate 2000", "log x", "status extra",
                                  "reboot"], pause=0.1)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: unknown command 'frobnicate': type help",
        "error: config expects show, get KEY or set KEY VALUE",
        "error: config key 'nosuch' is unknown; allowed: " + errors[2].split("allowed: ")[1],
        "error: config interval_s=-3: expected a number in 0.001..86400",
        "error: config coordinator_port=70000: expected an integer in 1..65535",
        "error: config meter.type='pzem017': expected one of simulated, pzem004t, sdm120, sdm630, s0, ct",
        "error: config key 'nosuch' is unknown; allowed: " + errors[6].split("allowed: ")[1],
        "error: calibrate expects WATTS [VOLTS] of a reference load, e.g. calibrate 2000 230",
        "error: calibrate this meter is calibrated by its maker and takes no calibration",
        "error: log expects a number of lines, got 'x'",
        "error: status takes no arguments, got 'extra'",
    ], out
    assert json.loads((image / "config.json").read_text()) == before
    assert code == 3


def test_config_set_is_validated_persisted_and_applied(tmp_path: Path, coordinator_factory) -> None:
    image, _, _ = console_image(tmp_path, coordinator_factory)
    out, _ = run_piped(image, ["config set interval_s 0.02", "config set device_name kitchen",
                               "config set meter.seed 9", "config get interval_s", "reboot"])
    assert "interval_s = 0.02 (saved, applied)" in out
    assert 'device_name = "kitchen" (saved; applies after reboot)' in out
    cfg = json.loads((image / "config.json").read_text())
    assert cfg["interval_s"] == 0.02 and cfg["device_name"] == "kitchen" and cfg["meter"]["seed"] == 9
    assert cfg["meter"]["profile"] == "prosumer"


def test_console_through_a_pseudo_terminal(tmp_path: Path, coordinator_factory) -> None:
    image, pub, _ = console_image(tmp_path, coordinator_factory)
    master, slave = pty.openpty()
    meter = boot(image, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    got = b""

    def read_until(marker: bytes, timeout: float = 20) -> None:
        nonlocal got
        deadline = time.time() + timeout
        while marker not in got and time.time() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    got += os.read(master, 4096)
                except OSError:
                    break
        assert marker in got, got[-2000:]

    try:
        read_until(b"console ready")
        os.write(master, b"status\r")
        read_until(b"free memory")
        os.write(master, b"pubkey\r")
        read_until(pub.hex().encode())
        os.write(master, b"bogus\r")
        read_until(b"error: unknown command 'bogus': type help")
        os.write(master, b"reboot\r")
        read_until(b"SUMMARY")
        assert meter.wait(20) == 3
    finally:
        if meter.poll() is None:
            meter.kill()
            meter.wait(5)
        os.close(master)


def test_factory_reset_asks_first_then_sends_old_totals_as_evidence(tmp_path: Path, coordinator_factory) -> None:
    image, pub, db = console_image(tmp_path, coordinator_factory)
    cfg = json.loads((image / "config.json").read_text())
    # Declined: nothing changes.
    out, _ = run_piped(image, ["reset", "no", "reboot"])
    assert "type YES to confirm" in out and "reset cancelled" in out
    assert json.loads((image / "config.json").read_text()) == cfg
    before = stored_rows(db, pub)
    # Confirmed: the reset record goes out, config and energy are cleared.
    out, code = run_piped(image, ["reset", "YES"], pause=1.0)
    assert "factory reset done" in out and code == 3, out
    assert json.loads((image / "config.json").read_text()) == {}
    # The installer provisions the board again; it continues the sequence.
    write_image(image, dict(cfg, max_readings=5, console=False))
    meter = boot(image)
    out, _ = meter.communicate(timeout=60)
    summary = meter_summary(out)
    assert summary["pending"] == 0 and summary["rejected"] == 0, summary
    rows = stored_rows(db, pub)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    resets = [r for r in rows if r["extra"] and "reset" in json.loads(r["extra"])]
    assert len(resets) == 1, [r["extra"] for r in rows]
    reset = resets[0]
    extra = json.loads(reset["extra"])
    prior = [r for r in rows if r["seq"] < reset["seq"]]
    assert extra["reset"] == "factory_reset"
    assert extra["reset_import_wh"] >= prior[-1]["import_wh"] > 0 and len(prior) > len(before)
    assert extra["reset_export_wh"] >= prior[-1]["export_wh"]
    # After the reset the counters start again from zero and only grow.
    after = [r["import_wh"] for r in rows if r["seq"] >= reset["seq"]]
    assert after[0] == 0 and after == sorted(after) and after[-1] < prior[-1]["import_wh"]
    assert_all_verify(rows, pub)


def test_energy_reset_from_the_console_is_a_signed_record_with_old_totals(tmp_path: Path, coordinator_factory) -> None:
    image, pub, db = console_image(tmp_path, coordinator_factory)
    out, _ = run_piped(image, ["reset energy", "YES", "reset bogus", "reboot"], pause=0.6)
    assert "energy reset done" in out, out
    assert "error: reset expects nothing (factory reset) or energy, got 'bogus'" in out
    rows = stored_rows(db, pub)
    marked = [r for r in rows if r["extra"] and json.loads(r["extra"]).get("reset") == "energy_reset"]
    assert len(marked) == 1
    extra = json.loads(marked[0]["extra"])
    before = [r for r in rows if r["seq"] < marked[0]["seq"]][-1]
    assert extra["reset_import_wh"] >= before["import_wh"] and marked[0]["import_wh"] == 0
    # The configuration is untouched by an energy reset.
    assert json.loads((image / "config.json").read_text())["console"] is True


def test_calibrate_from_the_console_refuses_small_loads_and_saves_gains(tmp_path: Path, coordinator_factory) -> None:
    fx = fixture("ct_waveforms.json")["cases"]["kettle"]
    meter = {"type": "ct", "v_pin": 36, "i_pin": 39, "samples": 400, "v_gain": fx["v_gain"] * 1.1,
             "i_gain": fx["i_gain"] * 0.8, "phase_cal": fx["phase_cal"]}
    image, _, _ = console_image(tmp_path, coordinator_factory, meter=meter)
    (image / "hal_script.json").write_text(json.dumps({"adc": {"36": {"samples": fx["v"]}, "39": {"samples": fx["i"]}}}))
    out, _ = run_piped(image, ["calibrate 40", "calibrate 2070 230", "reading", "reboot"])
    assert "error: calibrate reference load 40.0 W is too small to calibrate against: use at least 60 W" in out, out
    assert "calibrated: i_gain" in out and "(saved)" in out
    saved = json.loads((image / "config.json").read_text())["meter"]
    assert abs(saved["v_gain"] / fx["v_gain"] - 1) < 0.005 and abs(saved["i_gain"] / fx["i_gain"] - 1) < 0.01
    reading_line = [line for line in out.splitlines() if line.startswith("import ")][-1]
    power = float(reading_line.split("power ")[1].split(" W")[0])
    assert abs(power - 2070) < 10
