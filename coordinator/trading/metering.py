"""A household's energy at its grid connection, per market interval.

The coordinator's meters together measure the household's connection: the
energy of an interval is each meter's counter increase between its last
reading at or before the interval's start and its last reading at or before
its end, netted over all meters (what the solar meter exports first covers
what the load meters import). Forecasts for the market come from the same
numbers: the last complete interval, persisted forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..store.readings import ReadingStore, counter_increase


@dataclass(frozen=True)
class ConnectionEnergy:
    """Gross and net energy at the connection over one interval."""

    import_wh: int  # sum of the meters' imports
    export_wh: int  # sum of the meters' exports
    complete: bool  # every meter had readings at both ends

    @property
    def net_export_wh(self) -> int:
        return max(self.export_wh - self.import_wh, 0)

    @property
    def net_import_wh(self) -> int:
        return max(self.import_wh - self.export_wh, 0)


def interval_energy(store: ReadingStore, device_ids: Iterable[str], start: float, end: float) -> ConnectionEnergy:
    """Walks each meter's readings in the interval, so a counter reset in
    the middle (a signed reset record) is accounted for exactly."""
    imp = exp = 0
    complete = True
    for device in device_ids:
        rows = store.readings_between(device, start, end)
        if not rows or rows[0]["counted_at"] > start:  # store/readings.py: "When a reading counts"
            complete = False
        for prev, cur in zip(rows, rows[1:]):
            d_imp, d_exp = counter_increase(prev, cur)
            imp += d_imp
            exp += d_exp
    return ConnectionEnergy(imp, exp, complete)
