"""The demo report renders a self-contained page from its data, written
for the households: plain labels with units, dates on every time axis."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from microgrid.report import households, line_chart, write_report

T0 = 1_782_000_000  # 2026-06-21 00:00 UTC


def sample(days: float = 1.0) -> dict[str, Any]:
    n = int(days * 96)
    return {
        "title": "A simulated street",
        "timezone": {"name": "UTC+01:00", "offset_s": 3600},
        "tariff": {"import_sat_per_kwh": 250, "export_sat_per_kwh": 40},
        "summary": {"readings_produced": 12, "readings_accepted": 12, "energy_traded_wh": 340, "paid_sat": 21,
                    "money_reconciles": True, "result_digest": "ab" * 32, "stopped_early": False,
                    "p2p_prepaid_sat": 3, "incidents": [{"at": T0 + 3600, "what": "coordinator birch restarted"}]},
        "params": {"coordinators": 3, "seed": 1},
        "intervals": [{"start": T0 + 900 * i, "generation_wh": 100 * (i % 7), "consumption_wh": 300,
                       "traded_wh": 50, "clearing_price": None if i % 3 else 120, "self_sufficiency": 0.3}
                      for i in range(n)],
        "channels": [{"name": "birch -> alder", "capacity_sat": 1000,
                      "series": [[T0 + 900 * i, 10 * i] for i in range(n)]}],
        "participants": [{"coordinator": "alder", "meters": 2, "import_wh": 1000, "sold_wh": 340,
                          "utility_export_wh": 660, "p2p_received_sat": 21, "utility_credit_sat": 26},
                         {"coordinator": "birch", "meters": 1, "import_wh": 2000, "bought_wh": 340,
                          "utility_import_wh": 1660, "p2p_paid_sat": 21, "grid_fee_sat": 2, "utility_bill_sat": 415}],
        "money": [{"name": "alder", "delivered_wh": 340, "value_sat": 20.4, "owed_sat": 21, "rounding_sat": 0.6,
                   "paid_sat": 21, "ahead_sat": 0, "on_ledger_sat": 21, "reconciles": True}],
    }


def test_report_page_and_json_are_written(tmp_path: Path) -> None:
    page = write_report(tmp_path / "out", sample())
    text = page.read_text()
    assert text.count("<svg") == 4 and "Payments birch to alder" in text
    assert "Readings made by the meters" in text and "readings_produced" not in text
    assert json.loads((tmp_path / "out" / "report.json").read_text())["summary"]["energy_traded_wh"] == 340


def test_households_compare_with_the_utility_tariff_alone() -> None:
    alder, birch = households(sample())
    # birch: 340 Wh from alder for 21 sat + 2 sat fees, 1,660 Wh from the utility for 415 sat.
    assert birch["net_cost"] == 415 + 2 + 21
    assert birch["utility_only"] == 500  # 2,000 Wh at 250 sat/kWh
    assert birch["saved"] == 500 - 438 and birch["self_sufficiency"] == 17.0
    assert alder["net_cost"] == -21 - 26 and alder["utility_only"] == -40  # 1,000 Wh sold at 40


def test_chart_breaks_lines_at_gaps_marks_lone_points_and_handles_no_data() -> None:
    svg = line_chart("p", [0, 1, 2, 3], [("s", [1, None, 2, 3])], "u")
    path = svg.split('d="')[1].split('"')[0]
    assert path.count("M") == 2 and svg.count("<circle") == 1  # the 1 alone is a dot
    assert "No data" in line_chart("p", [], [("s", [])], "u")


@pytest.mark.parametrize("days", [0.1, 1, 30])
def test_every_time_axis_has_dates_and_the_zone(days: float) -> None:
    svg = line_chart("p", [T0 + 900 * i for i in range(int(days * 96))], [("s", [1.0] * int(days * 96))], "u")
    ticks = re.findall(r'class="x-tick"[^>]*>([^<]+)<', svg)
    assert 2 <= len(ticks) <= 12 and all(re.search(r"\d{1,2} [A-Z][a-z]{2}", t) for t in ticks), ticks
    assert "Local time (UTC)" in svg


def _visible_text(dom: str) -> str:
    dom = re.sub(r"(?s)<(style|script)[^>]*>.*?</\1>", " ", dom)
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_dom(page: Path, profile: Path) -> str:
    """The page as headless Chromium built it (its DOM after loading)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (scripts/test.sh does it)")
    return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=90).stdout


def raw_key_names(dom: str) -> list[str]:
    """snake_case words a person would see on the page."""
    return sorted(set(re.findall(r"\b[a-z]+(?:_[a-z0-9]+)+\b", _visible_text(dom))))


def time_axis_ticks(dom: str) -> list[list[str]]:
    return [re.findall(r'class="x-tick"[^>]*>([^<]+)<', svg) for svg in re.findall(r"(?s)<svg.*?</svg>", dom)]


def test_the_report_renders_in_headless_chromium_for_people(tmp_path: Path) -> None:
    """What a person sees: the page loads without script errors, its
    charts are drawn, no raw key name shows, and every time axis has
    dates and names the zone."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (scripts/test.sh does it)")
    page = write_report(tmp_path / "out", sample(days=3))
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
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=90).stdout
    assert dom.count("<svg") == 4 and "<path" in dom
    text = _visible_text(dom)
    raw = sorted(set(re.findall(r"\b[a-z]+(?:_[a-z0-9]+)+\b", text)))
    assert raw == [], f"raw key names on the page: {raw}"
    for svg in re.findall(r"(?s)<svg.*?</svg>", dom):
        ticks = re.findall(r'class="x-tick"[^>]*>([^<]+)<', svg)
        assert ticks and all(re.search(r"\d{1,2} [A-Z][a-z]{2}", t) for t in ticks), ticks
        assert "Local time (UTC+01:00)" in svg
    assert "21 Jun 2026 02:00 UTC+01:00" in text and "coordinator birch restarted" in text
    # Offline: nothing loaded from elsewhere.
    assert not re.search(r'(src|href)="(https?:)?//', dom)
