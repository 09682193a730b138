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
