"""Load forecast: what the household will consume in each slot, from what
its meters recorded.

Consumption of a past slot is the sum of the household's meters' imports
over it (trading/metering.py's `interval_energy`, the same figure the
market's own forecast uses), counted only when every meter had readings at
both ends. For a future slot the forecast is, in this order:
1. the mean over the last `weeks` weeks of the same weekday and time of
   day (households live by the week: the Saturday morning is not the
   Tuesday's);
2. else the mean over the last 7 days at the same time of day;
3. else a typical household's day (`TYPICAL_DAY`, hourly shares with a
   morning and an evening peak) scaled to `fallback_daily_wh`.
Time of day is local (`utc_offset_s`), for the fallback profile; the
history itself is looked up by exact offsets of a day or a week.

Past slots are remembered (they do not change once the metering is
complete), so a rerun every interval reads only the few new ones.
"""

from __future__ import annotations

import bisect
from typing import Callable, Iterable

from ..store.readings import ReadingStore, counter_increase
from ..trading.metering import interval_energy
from .model import PlanInputError

DAY_S = 86_400
WEEK_S = 7 * DAY_S

# Share of a day's consumption in each local hour (sums to 1): night base,
# a morning peak, a daytime plateau and the evening peak.
TYPICAL_DAY = (0.025, 0.022, 0.020, 0.020, 0.020, 0.024, 0.036, 0.048, 0.046, 0.040, 0.038, 0.040,
               0.043, 0.040, 0.038, 0.040, 0.046, 0.060, 0.073, 0.075, 0.068, 0.057, 0.045, 0.036)

# A past slot's consumption in Wh, or None when it is not known (meters
# missing readings at either end).
SlotHistory = Callable[[int, int], "float | None"]


class StoreHistory:
    """Past slots' consumption from the coordinator's readings store: one
    slot by `interval_energy` (the metering's own walk), or many at once
    (`many`) from one `readings_between` per meter over their whole span,
    walked the same way: per meter, `counted_at` increases with the
    sequence (store/readings.py), so a slot's readings are a run of the
    span's."""

    def __init__(self, store: ReadingStore, device_ids: Callable[[], Iterable[str]]) -> None:
        self.store = store
        self.device_ids = device_ids

    def __call__(self, start: int, end: int) -> float | None:
        devices = list(self.device_ids())
        if not devices:
            return None
        e = interval_energy(self.store, devices, start, end)
        return float(e.import_wh) if e.complete else None

    def many(self, slots: Iterable[tuple[int, int]]) -> dict[tuple[int, int], float | None]:
        wanted = sorted(set(slots))
        devices = list(self.device_ids())
        if not wanted or not devices:
            return {s: None for s in wanted}
        lo, hi = wanted[0][0], max(b for _, b in wanted)
        total = {s: 0 for s in wanted}
        complete = {s: True for s in wanted}
        for device in devices:
            rows = self.store.readings_between(device, lo, hi)
            times = [r["counted_at"] for r in rows]
            for a, b in wanted:
                i = bisect.bisect_right(times, a) - 1  # the last reading counted at or before the start
                j = bisect.bisect_right(times, b)  # past the last one counted at or before the end
                if i < 0:
                    complete[(a, b)] = False
                    i = 0
                for prev, cur in zip(rows[i:j], rows[i + 1:j]):
                    total[(a, b)] += counter_increase(prev, cur)[0]
        return {s: float(total[s]) if complete[s] else None for s in wanted}


def store_history(store: ReadingStore, device_ids: Callable[[], Iterable[str]]) -> StoreHistory:
    """Past slots' consumption from the coordinator's readings store."""
    return StoreHistory(store, device_ids)


def store_export(store: ReadingStore, device_ids: Iterable[str]) -> SlotHistory:
    """Past slots' export of the given meters (a PV array's own meter)."""
    devices = list(device_ids)

    def export(start: int, end: int) -> float | None:
        if not devices:
            return None
        e = interval_energy(store, devices, start, end)
        return float(e.export_wh) if e.complete else None
    return export


class LoadForecaster:
    def __init__(self, history: SlotHistory, weeks: int = 4, fallback_daily_wh: float = 10_000.0,
                 utc_offset_s: int = 0) -> None:
        if not 1 <= weeks <= 52:
            raise PlanInputError(f"weeks={weeks!r}: expected 1..52")
        if not 0 <= fallback_daily_wh <= 10**6:
            raise PlanInputError(f"fallback_daily_wh={fallback_daily_wh!r}: expected 0..1000000")
        self.history = history
        self.weeks = weeks
        self.fallback_daily_wh = fallback_daily_wh
        self.utc_offset_s = utc_offset_s
        self._known: dict[tuple[int, int], float | None] = {}

    def _past(self, start: int, slot_s: int, now: int) -> float | None:
        if start + slot_s > now:  # not over yet
            return None
        key = (start, slot_s)
        if key not in self._known:
            v = self.history(start, start + slot_s)
            if v is None:
                return None  # may still complete (a late reading): ask again next time
            self._known[key] = v
        return self._known[key]

    def _mean(self, t: int, slot_s: int, now: int, step_s: int, n: int) -> float | None:
        """Mean of the last `n` occurrences of slot `t`, `step_s` apart,
        that are over by `now`; None when none is known."""
        back = max(1, -(-(t + slot_s - now) // step_s))  # steps back to the newest occurrence that is over
        found = [v for j in range(n) if (v := self._past(t - (back + j) * step_s, slot_s, now)) is not None]
        return sum(found) / len(found) if found else None

    def typical_wh(self, t: int, slot_s: int) -> float:
        hour = ((t + self.utc_offset_s) % DAY_S) // 3600
        return self.fallback_daily_wh * TYPICAL_DAY[hour] / sum(TYPICAL_DAY) * slot_s / 3600.0

    def _prefetch(self, now: int, start: int, slot_s: int, slots: int) -> None:
        """Read every past slot the weekly means need at once, when the
        history can (StoreHistory.many): one query per meter instead of one
        per slot, for the first forecast after a start."""
        many = getattr(self.history, "many", None)
        if many is None:
            return
        need = []
        for i in range(slots):
            t = start + i * slot_s
            back = max(1, -(-(t + slot_s - now) // WEEK_S))
            for j in range(self.weeks):
                p = t - (back + j) * WEEK_S
                if (p, slot_s) not in self._known and p + slot_s <= now:
                    need.append((p, p + slot_s))
        if len(need) < 8:  # a few new slots: one by one is as quick
            return
        for (a, b), v in many(need).items():
            if v is not None:
                self._known[(a, b - a)] = v

    def forecast(self, now: int, start: int, slot_s: int, slots: int) -> tuple[list[float], list[str]]:
        """(Wh per slot, where each came from: "week", "day" or "typical")."""
        self._prefetch(now, start, slot_s, slots)
        out: list[float] = []
        how: list[str] = []
        for i in range(slots):
            t = start + i * slot_s
            v = self._mean(t, slot_s, now, WEEK_S, self.weeks)
            if v is not None:
                out.append(v)
                how.append("week")
                continue
            v = self._mean(t, slot_s, now, DAY_S, 7)
            if v is not None:
                out.append(v)
                how.append("day")
                continue
            out.append(self.typical_wh(t, slot_s))
            how.append("typical")
        return out, how

    def forget_before(self, t: int) -> None:
        """Drop remembered slots older than `t` (bounded memory)."""
        for key in [k for k in self._known if k[0] < t]:
            del self._known[key]
