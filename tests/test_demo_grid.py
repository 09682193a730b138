"""microgrid/demo/grid.py: the demo's report runs the grid check (issue
21's power flow) on every settled interval, on made-up settlements (no
processes): a quiet street stays inside the limits, a far too large export
is counted as broken, and the report says it in words with units."""

from __future__ import annotations

import re
from types import SimpleNamespace as NS
from typing import Any

from microgrid.demo import grid_line
from microgrid.demo.grid import grid_check
from microgrid.report import render_html

from .test_report import T0, _visible_text, raw_key_names, sample

HOUSES = ["02" + f"{i:02x}" * 32 for i in range(3)]
STRANGER = "03" + "ee" * 32


def settlement(*net_wh: int, extra: list[Any] | None = None) -> Any:
    rows = [NS(participant=h, export_wh=max(wh, 0), import_wh=max(-wh, 0)) for h, wh in zip(HOUSES, net_wh)]
    return NS(participants=rows + (extra or []))


def test_a_quiet_street_stays_inside_the_limits_and_a_huge_export_does_not() -> None:
    settled = {
        T0: settlement(300, -200, -100),  # 1.2 kW out, 0.8 and 0.4 kW in
        T0 + 900: settlement(40_000, -100, -100),  # 160 kW from one house: far beyond a rural cable
        T0 + 1800: settlement(0, 0, 0, extra=[NS(participant=STRANGER, export_wh=5, import_wh=0)]),
    }
    g = grid_check(settled, HOUSES, 900)
    quiet, huge, empty = g["intervals"]
    assert [c["start"] for c in g["intervals"]] == [T0, T0 + 900, T0 + 1800]
    assert quiet["converged"] and quiet["voltage_violations"] == 0 and quiet["line_overloads"] == 0
    assert 0.97 < quiet["min_vm_pu"] <= quiet["max_vm_pu"] < 1.03
    assert (quiet["export_wh"], quiet["import_wh"]) == (300, 300)
    assert not huge["converged"] or huge["voltage_violations"] or huge["line_overloads"] or huge["trafo_overloads"]
    assert g["unplaced"] == 1 and empty["export_wh"] == 0  # the stranger is left out, counted
    assert g["summary"]["intervals"] == 3 and g["summary"]["intervals_outside_limits"] == 1

    # The report: a section in words with units, no raw key names.
    data = sample(0.05)
    data["grid"] = g
    page = render_html(data)
    text = _visible_text(page)
    assert "The feeder" in text and "Lowest voltage at a connection point (V)" in text
    assert "kerber landnetz kabel 1" in text and raw_key_names(page) == []
    lowest = re.search(r"Lowest voltage at a connection point \(V\)\s+([\d.]+)", text)
    assert lowest and 150 < float(lowest.group(1)) < 230
    assert "Voltage on the feeder" in text and "Loading of the feeder" in text
    # The voltage axis shows the allowed band, not 0 to 250 V.
    volt_svg = re.search(r'(?s)aria-label="Voltage on the feeder".*?</svg>', page)
    assert volt_svg and ">0<" not in volt_svg.group(0) and ">230<" in volt_svg.group(0)
    assert "intervals checked on kerber_landnetz_kabel_1" in grid_line(g)


def test_a_check_that_cannot_run_is_said_and_the_report_still_renders() -> None:
    from microgrid.demo import run_grid_check

    g = run_grid_check({T0: settlement(1, 1, 1)}, HOUSES, network="no_such_feeder")
    assert "error" in g and "no_such_feeder" in g["error"]
    data = sample(0.05)
    data["grid"] = g
    assert "The power flow check could not run" in _visible_text(render_html(data))
    assert grid_line(g).startswith("the power flow check could not run")
