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

from ..store.readings import ReadingStore


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
    imp = exp = 0
    complete = True
    for device in device_ids:
        before = store.counters_at(device, start)
        after = store.counters_at(device, end)
        if after is None:
            complete = False
            continue
        if before is None:
            complete = False
            before = (after[0], after[1])
        imp += max(after[0] - before[0], 0)
        exp += max(after[1] - before[1], 0)
    return ConnectionEnergy(imp, exp, complete)
