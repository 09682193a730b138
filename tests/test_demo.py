"""`microgrid demo`: a small neighbourhood runs to the end with every
reading stored, and Ctrl-C stops every process but still writes a report."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microgrid.demo import MAX_SPEED

from .test_report import chromium_dom, raw_key_names, time_axis_ticks

REQUIRED = ["readings_produced", "readings_stored", "readings_rejected", "energy_traded_wh", "trades",
            "payment_updates", "settlement_txs", "settlement_txs_verified", "energy_balance_error_wh"]


def demo(*args: str) -> list[str]:
    return [sys.executable, "-m", "microgrid.cli", "demo", "--quiet", *args]


def test_small_neighbourhood_stores_every_reading_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(demo("--coordinators", "2", "--meters", "3", "--days", "0.03", "--json", "--out", str(out)),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    for key in REQUIRED:
        assert key in summary
    assert summary["readings_produced"] == summary["readings_stored"] > 0
    assert summary["readings_rejected"] == 0 and summary["energy_balance_error_wh"] == 0
    assert (out / "report.html").exists() and json.loads((out / "report.json").read_text())["summary"]["meters"] == 3


def test_ctrl_c_stops_every_process_and_still_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(demo("--coordinators", "2", "--meters", "2", "--days", "1", "--json", "--out", str(out)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    # Until the meters have booted (their own logs, not the flash tool's).
    while time.time() < deadline and not [p for p in out.glob("*/*.log") if not p.name.endswith(".flash.log")]:
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert "interrupted" in stderr
    summary = json.loads(stdout)
    assert summary["stopped_early"] is True and summary["readings_stored"] > 0
    assert (out / "report.html").exists()
    # Meters run with their image folder as working directory.
    leftover = []
    for pid_dir in Path("/proc").iterdir():
        try:
            if pid_dir.name.isdigit() and str((pid_dir / "cwd").resolve()).startswith(str(out.resolve())):
                leftover.append(pid_dir.name)
        except OSError:
            pass
    assert leftover == [], f"processes left running: {leftover}"


def test_limits_are_enforced_with_a_clear_message() -> None:
    proc = subprocess.run(demo("--meters", "500"), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--meters must be between 1 and 40 on a 2-core machine" in proc.stderr
    proc = subprocess.run(demo("--speed", str(MAX_SPEED + 1)), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and f"--speed must be between 1 and {MAX_SPEED}" in proc.stderr


def test_a_sunny_morning_trades_pays_through_channels_and_settles_on_the_ledger(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(demo("--start-hour", "10", "--days", "0.1", "--json", "--out", str(out)),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = json.loads(proc.stdout)
    assert s["readings_produced"] == s["readings_stored"] and s["readings_rejected"] == 0
    assert s["trades"] > 0 and 0 < s["energy_traded_wh"] <= s["energy_matched_wh"]
    assert s["book_disagreements"] == 0 and s["trading_errors"] == 0
    # About one update per 10 Wh paid so far, or per satoshi where 10 Wh is
    # worth less than one (a clearing price under 100 sat/kWh).
    assert s["payment_updates"] >= min(s["paid_sat"], s["energy_traded_wh"] // 10) // 2
    # Buyers pay as their meters show energy arriving, settlement tops up, and
    # every satoshi is accounted for: owed and paid, or paid ahead.
    assert 0 < s["streamed_sat"] <= s["paid_sat"]
    assert s["p2p_unpaid_sat"] == 0
    assert s["paid_sat"] == s["p2p_owed_sat"] + s["p2p_prepaid_sat"]
    # Sellers judge buyers during each interval; buyers that keep up are never cut off.
    assert s["export_relay_cuts"] == 0
    journal = [json.loads(line) for c in sorted(out.glob("*/gpio.jsonl")) for line in c.read_text().splitlines()]
    assert journal, "the export relays' simulated GPIO journal is empty"
    assert s["settlement_txs"] > 0 and s["settlement_txs_verified"] == s["settlement_txs"]
    assert s["energy_balance_error_wh"] == 0


# -- the same answer on any machine (issue 17) ---------------------------------

SMALL = ("--coordinators", "2", "--meters", "3", "--start-hour", "10", "--days", "0.06", "--json")


def _run_small(out: Path, *extra: str) -> dict:
    proc = subprocess.run(demo(*SMALL, "--out", str(out), *extra), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _run_small(tmp_path_factory.mktemp("ref") / "run")


def test_a_run_trades_settles_and_reports_its_result_digest(reference: dict) -> None:
    s = reference
    assert s["trades"] > 0 and s["energy_traded_wh"] > 0 and s["paid_sat"] > 0
    assert s["book_disagreements"] == 0 and s["trading_errors"] == 0
    assert s["readings_produced"] == s["readings_stored"] and s["energy_balance_error_wh"] == 0
    assert len(s["result_digest"]) == 64
    # Money to the satoshi: each seller's ledger receipts are what its
    # buyers signed, which is the settlements' dues (delivered Wh x
    # clearing price, rounded up once per buyer and interval) plus what
    # was paid ahead; one definition of paid everywhere.
    assert s["money_reconciles"] is True and s["money_within_1_sat_per_interval"] is True
    assert s["on_ledger_sat"] == s["paid_sat"] == s["p2p_owed_sat"] + s["p2p_prepaid_sat"] - s["p2p_unpaid_sat"]
    assert 0 <= s["p2p_owed_sat"] - s["p2p_value_sat"] < s["trades"]


def test_the_same_seed_twice_gives_the_same_result_digest(reference: dict, tmp_path: Path) -> None:
    again = _run_small(tmp_path / "run")
    assert again["result_digest"] == reference["result_digest"]
    assert (again["trades"], again["energy_traded_wh"], again["paid_sat"]) == \
        (reference["trades"], reference["energy_traded_wh"], reference["paid_sat"])
    assert again["book_disagreements"] == 0


def test_both_cores_busy_and_the_fastest_speed_give_the_same_result_digest(reference: dict, tmp_path: Path) -> None:
    busy = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(2)]
    try:
        loaded = _run_small(tmp_path / "run", "--speed", str(MAX_SPEED))  # the highest ceiling --speed takes
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert loaded["result_digest"] == reference["result_digest"]
    assert loaded["book_disagreements"] == 0 and loaded["trading_errors"] == 0


def test_another_seed_gives_another_result_digest(reference: dict, tmp_path: Path) -> None:
    """The digest covers the economics: it can tell two runs apart."""
    other = _run_small(tmp_path / "run", "--seed", "2")
    assert other["result_digest"] != reference["result_digest"]


@pytest.mark.timeout(360)  # a demo run and Chromium: about 50 s on a quiet machine
def test_every_coordinator_restarts_and_meters_lose_power_and_the_report_says_what_each_did(tmp_path: Path) -> None:
    """The scripted incidents (issue 17): each coordinator stops and starts
    again in the same process on the same ports (its old overlay node
    joined first, engine.join_parked), reloads its channels and picks up
    what was in flight, and both neighbours read its new directory record;
    two meters lose power and boot again from flash. Nothing is lost, the
    payer keeps paying on the channel it had, and the summary and the
    report say what each incident did."""
    proc = subprocess.run(demo("--coordinators", "3", "--meters", "3", "--start-hour", "10", "--days", "0.07",
                               "--incidents", "on", "--json", "--out", str(tmp_path / "run")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    s = json.loads(proc.stdout)
    assert s["incident_failures"] == []
    restarts = [i for i in s["incidents"] if i["kind"] == "restart"]
    cuts = [i for i in s["incidents"] if i["kind"] == "power cut"]
    # Every coordinator once, the overlay's bootstrap node (alder) too, each at its own time.
    assert sorted(i["target"] for i in restarts) == ["alder", "birch", "cedar"]
    assert len({i["at"] for i in restarts}) == 3
    for i in restarts:
        assert (i["found_by"], i["of"]) == (2, 2) and i["intervals_picked_up"] >= 1
        assert f"coordinator {i['target']} restarted: " in i["what"] and "found by 2 of 2 neighbours" in i["what"]
    # alder sells to birch on one channel: both restart with it open and
    # it carries payments after (no second channel is opened).
    traders = {i["target"]: i for i in restarts if i["channels_resumed"]}
    assert set(traders) == {"alder", "birch"}
    assert all(i["moved_after_sat"] > 0 for i in traders.values())
    assert (s["channels_opened"], s["channel_rollovers"]) == (1, 0)
    # Two meters, each off for 5 minutes: nothing made before the cut is
    # lost, the sequence goes on, and nothing is made while off.
    assert len({i["target"] for i in cuts}) == 2
    for i in cuts:
        assert i["recovered"] == i["waiting"] and i["not_made"] == 5 and i["next_seq"] > 1
        assert "lost power for 5 min" in i["what"] and "not made while off" in i["what"]
    assert s["readings_produced"] == s["readings_accepted"] == s["readings_stored"] and s["readings_rejected"] == 0
    assert s["money_reconciles"] is True and s["money_within_1_sat_per_interval"] is True
    assert s["p2p_unpaid_sat"] == 0 and s["energy_balance_error_wh"] == 0 and s["paid_sat"] > 0
    assert s["book_disagreements"] == 0 and s["trading_errors"] == 0
    # The report of the run, as Chromium shows it: every incident in words, no
    # raw key names, a date on every time axis.
    dom = chromium_dom(tmp_path / "run" / "report.html", tmp_path / "profile")
    for i in restarts + cuts:
        assert i["what"].split(":")[0] in dom
    assert "reloaded from its store" in dom and "not made while off" in dom and raw_key_names(dom) == []
    ticks = time_axis_ticks(dom)
    assert ticks and all(t and all(re.search(r"\d{1,2} [A-Z][a-z]{2}", x) for x in t) for t in ticks), ticks
