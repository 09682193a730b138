from __future__ import annotations

import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_channel_benchmark_runs_briefly_and_prints_ratios(capsys) -> None:
    mod = runpy.run_path(str(REPO / "bench" / "bench_channels.py"))
    assert mod["main"](["--updates", "20", "--seconds", "2"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and out.count("ratio") == 3 and "p99" in out and "rollover" in out
