"""Energy per interval from stored readings.

Meters report cumulative counters; the energy of an interval is the
increase of a counter between consecutive readings, booked to the interval
in which the later reading falls. `balance_error_wh` compares what the
intervals hold with each meter's first and last counters as stored: a
gap, a duplicate or a counter that ran backwards shows up there.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from microgrid.coordinator.store.readings import counter_increase


@dataclass
class IntervalEnergy:
    import_wh: int = 0  # drawn from the grid connection by the meters
    export_wh: int = 0  # fed into it


@dataclass
class Ledger:
    interval_s: int
    # (participant, interval start) -> energy
    cells: dict[tuple[str, int], IntervalEnergy] = field(default_factory=lambda: defaultdict(IntervalEnergy))
    # participant -> counters' increase from each meter's first to last reading
    totals: dict[str, IntervalEnergy] = field(default_factory=lambda: defaultdict(IntervalEnergy))

    def add_meter(self, participant: str, readings: Iterable[dict]) -> None:
        """`readings`: one meter's rows ordered by seq (time, import_wh, export_wh)."""
        prev = None
        first = None
        rows = list(readings)
        for r in rows:
            if first is None:
                first = r
            if prev is not None:
                d_imp, d_exp = counter_increase(prev, r)
                start = int(r["time"]) // self.interval_s * self.interval_s
                cell = self.cells[(participant, start)]
                cell.import_wh += d_imp
                cell.export_wh += d_exp
            prev = r
        if first is not None and prev is not None:
            # Independently of the interval booking: first to last counter,
            # plus what each reset record says ran up before it.
            tot = self.totals[participant]
            imp, exp = prev["import_wh"] - first["import_wh"], prev["export_wh"] - first["export_wh"]
            last = first
            for r in rows[1:]:
                extra = json.loads(r["extra"]) if isinstance(r.get("extra"), str) else (r.get("extra") or {})
                if "reset" in extra:
                    imp += int(extra.get("reset_import_wh", last["import_wh"]))
                    exp += int(extra.get("reset_export_wh", last["export_wh"]))
                last = r
            tot.import_wh += imp
            tot.export_wh += exp

    def intervals(self) -> list[int]:
        return sorted({start for _, start in self.cells})

    def participants(self) -> list[str]:
        return sorted({p for p, _ in self.cells})

    def at(self, participant: str, start: int) -> IntervalEnergy:
        return self.cells.get((participant, start)) or IntervalEnergy()

    def balance_error_wh(self) -> int:
        """Sum over intervals minus the counters' total increase (must be 0)."""
        err = 0
        for p, tot in self.totals.items():
            imp = sum(c.import_wh for (q, _), c in self.cells.items() if q == p)
            exp = sum(c.export_wh for (q, _), c in self.cells.items() if q == p)
            err += abs(imp - tot.import_wh) + abs(exp - tot.export_wh)
        return err
