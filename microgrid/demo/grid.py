"""The feeder under the demo's street: the grid check of every settled
interval (coordinator/grid/check.py, a pandapower AC power flow), for the
report. Issue 21 asks the demo to place its households on one of
pandapower's low-voltage benchmark networks; the check runs after the
run, on the settlements' metered energy, so it changes nothing of the
economics (nor `result_digest`).

Each household (coordinator) sits on the benchmark's i-th load bus in the
order of the coordinators; its metered net energy in the interval
(export - import, Wh) is an average power there. The result: per
interval the lowest and highest voltage and the highest cable and
transformer loading, and how many intervals broke a limit (EN 50160:
0.90..1.10 of 230 V; loading above 100 %).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

log = logging.getLogger("microgrid.demo")

NETWORK = "kerber_landnetz_kabel_1"  # a rural cable feeder, 13 houses: room for MAX_COORDINATORS
NOMINAL_V = 230.0


def metered_by_household(settlement: Any) -> dict[str, int]:
    """Participant (public key hex) -> net Wh exported (+) or imported (-)."""
    out: dict[str, int] = {}
    for r in settlement.participants:
        out[r.participant] = out.get(r.participant, 0) + int(r.export_wh) - int(r.import_wh)
    return out


def grid_check(settled: Mapping[int, Any], households: Iterable[str], interval_s: int,
               network: str = NETWORK) -> dict[str, Any]:
    """The power flow of every settled interval with `households` (public
    key hex, in order) placed on `network`: GridReport.to_dict() plus the
    network's name. A participant not among `households` is left out
    (counted in `unplaced`)."""
    from microgrid.coordinator.grid.check import GridCheck, GridReport
    from microgrid.coordinator.grid.model import benchmark

    keys = list(households)
    check = GridCheck(benchmark(network, [bytes.fromhex(k) for k in keys]))
    placed = set(keys)
    report = GridReport()
    unplaced = 0
    for start in sorted(settled):
        metered = {}
        for who, wh in metered_by_household(settled[start]).items():
            if who in placed:
                metered[bytes.fromhex(who)] = wh
            else:
                unplaced += 1
        report.add(check.run(start, interval_s, metered))
    out = report.to_dict()
    out["summary"]["intervals_outside_limits"] = sum(1 for c in report.checks if c.violated)
    out["network"] = network
    out["unplaced"] = unplaced
    return out
