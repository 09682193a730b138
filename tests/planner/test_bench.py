from __future__ import annotations

import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_planner_benchmark_runs_a_day_and_prints_both_sides_with_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    mod = runpy.run_path(str(REPO / "bench" / "bench_planner.py"))
    assert mod["main"](["--days", "1", "--runs", "2", "--households", "1", "--history-weeks", "1"]) == 0
    out = capsys.readouterr().out
    assert "baseline: greedy rule-based" in out and "LP / greedy" in out and "a whole decision: 1 weeks" in out
    assert "baseline: rule-based" in out and "planner / baseline: bill" in out and "feeder peak import" in out
    assert "fallbacks 0" in out
