"""The demo report renders a self-contained page from its data."""

from __future__ import annotations

import json
from pathlib import Path

from microgrid.report import line_chart, write_report


def test_report_page_and_json_are_written(tmp_path: Path) -> None:
    data = {
        "title": "t",
        "summary": {"readings_stored": 12, "energy_traded_wh": 340},
        "params": {"coordinators": 3},
        "intervals": [{"start": 1_700_000_000 + 900 * i, "generation_wh": 10 * i, "consumption_wh": 5,
                       "traded_wh": 2, "clearing_price": None if i == 1 else 40, "self_sufficiency": 0.5} for i in range(4)],
        "channels": [{"name": "a->b", "capacity_sat": 1000, "series": [[1_700_000_000, 0], [1_700_000_900, 120]]}],
        "participants": [{"coordinator": "a", "sold_wh": 340}],
    }
    page = write_report(tmp_path / "out", data)
    text = page.read_text()
    assert text.count("<svg") == 4 and "Channel a-&gt;b" in text and "readings_stored" in text
    assert json.loads((tmp_path / "out" / "report.json").read_text())["summary"]["energy_traded_wh"] == 340


def test_chart_breaks_lines_at_gaps_and_handles_no_data() -> None:
    svg = line_chart("p", [0, 1, 2, 3], [("s", [1, None, 2, 3])], "u")
    path = svg.split('d="')[1].split('"')[0]
    assert path.count("M") == 2
    assert "no data" in line_chart("p", [], [("s", [])], "u")


def test_the_report_renders_in_headless_chromium_with_its_plots(tmp_path: Path) -> None:
    """What a person sees: the page loads without script errors and its
    charts are drawn (a screenshot is taken and must not be blank)."""
    import shutil
    import subprocess

    import pytest

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (scripts/test.sh does it)")
    data = {
        "title": "t", "summary": {"readings_stored": 1},
        "intervals": [{"start": 1_700_000_000 + 900 * i, "generation_wh": 100 * (i % 7), "consumption_wh": 300,
                       "traded_wh": 50, "clearing_price": 120, "self_sufficiency": 0.3} for i in range(40)],
        "channels": [{"name": "a->b", "capacity_sat": 1000, "series": [[1_700_000_000 + 900 * i, 10 * i] for i in range(40)]}],
        "participants": [{"coordinator": "a"}],
    }
    page = write_report(tmp_path / "out", data)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    proc = subprocess.run([chromium, *flags, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                           "--window-size=900,1800", page.as_uri()], capture_output=True, text=True, timeout=90)
    assert shot.exists(), proc.stderr[-2000:]
    assert "Uncaught" not in proc.stderr and "CONSOLE" not in proc.stderr.upper().replace("CONSOLE_", "")
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000  # a blank page compresses to a few KB
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90)
    assert dom.stdout.count("<svg") == 4 and "<path" in dom.stdout
