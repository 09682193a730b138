"""Helpers for running edge code under the MicroPython unix port."""

from __future__ import annotations

import json
from pathlib import Path

from ..conftest import run_micropython

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def mp_json(script: str, stdin: str = "") -> object:
    """Run `script` under micropython; its last stdout line is JSON."""
    out = run_micropython(script, stdin=stdin)
    return json.loads(out.strip().splitlines()[-1])


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


# A MicroPython function that turns a Measurement into a JSON-able dict.
MEASUREMENT_TO_DICT = """
def as_dict(m):
    d = {}
    for k in ("import_wh", "export_wh", "power_w", "voltage_v", "current_a", "frequency_hz", "flags", "power_factor"):
        d[k] = getattr(m, k)
    d["reset"] = list(m.reset) if m.reset else None
    d["extra"] = [list(r) for r in m.extra_records()]
    return d
"""
