"""The energy company's price events -> the import price the planner plans
with. Protocol logic only: the events arrive as openleadr's parsed dicts
(ven.py is the transport); time is passed in.

An OpenADR 2.0b event has an active period and signals, each a list of
intervals (a start, a duration, a payload). What each signal means here:

    ELECTRICITY_PRICE / ENERGY_PRICE, type "price":      import = payload x price_scale (sat/kWh)
                                      type "priceRelative": import = tariff + payload x price_scale
                                      type "priceMultiplier": import = tariff x payload
    SIMPLE (level 0..3):                                   import = tariff x simple_multipliers[level]

Other signals (load dispatch, demand charges...) are not acted on: the
event is refused (optOut), so the VTN knows this VEN will not follow it. A
payload that is not a finite number, a negative or absurd price (above
max_price_sat_per_kwh), a level outside 0..3 or an interval without a
start or duration refuses the whole event and changes nothing.

Where events overlap, the one received last decides (an energy company
updating a price sends a new event or a new modification of the same one,
which replaces it). A cancelled event is removed. Windows that have ended
are dropped when the next event arrives (`prune`).

Only the import price is set: OpenADR 2.0b's price signals are what the
customer pays; the export tariff stays as configured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Sequence

from .settings import OpenAdrSettings

OPT_IN = "optIn"
OPT_OUT = "optOut"

PRICE_SIGNALS = ("ELECTRICITY_PRICE", "ENERGY_PRICE")
SIMPLE_SIGNALS = ("SIMPLE", "simple")
ABSOLUTE, RELATIVE, MULTIPLIER, LEVEL = "price", "priceRelative", "priceMultiplier", "level"


class EventRefused(ValueError):
    """An event this VEN does not act on, and why."""


@dataclass(frozen=True)
class PriceWindow:
    event_id: str
    start: int  # Unix seconds, inclusive
    end: int  # exclusive
    kind: str  # ABSOLUTE, RELATIVE (sat/kWh added) or MULTIPLIER (SIMPLE levels become multipliers)
    value: float  # sat/kWh for ABSOLUTE and RELATIVE, a factor for MULTIPLIER
    seq: int  # the order events arrived in: the last one decides where they overlap

    def price(self, tariff: float) -> float:
        if self.kind == ABSOLUTE:
            return self.value
        if self.kind == RELATIVE:
            return max(0.0, tariff + self.value)
        return tariff * self.value


def _unix(v: Any) -> int:
    if isinstance(v, datetime):
        if v.tzinfo is None:
            raise EventRefused("a start without a time zone")
        return int(v.timestamp())
    raise EventRefused(f"a start that is not a time: {v!r}")


def _seconds(v: Any) -> int:
    if isinstance(v, timedelta):
        s = int(v.total_seconds())
        if s <= 0:
            raise EventRefused(f"a duration that is not positive: {v}")
        return s
    raise EventRefused(f"a duration that is not a duration: {v!r}")


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise EventRefused(f"a payload that is not a finite number: {v!r}")
    return float(v)


class PriceEvents:
    """The price windows in force, from the VTN's events."""

    def __init__(self, settings: OpenAdrSettings) -> None:
        self.settings = settings
        self.windows: list[PriceWindow] = []
        self._seq = 0
        self.refused: dict[str, str] = {}  # event id -> why (the latest refusals, for the log and the tests)

    def windows_of(self, event: dict[str, Any]) -> list[PriceWindow]:
        """The event's price windows; EventRefused when it is not one this
        VEN acts on (module docstring)."""
        try:
            event_id = str(event["event_descriptor"]["event_id"])
            active = event["active_period"]
            signals = event["event_signals"]
        except (KeyError, TypeError):
            raise EventRefused("not an OpenADR event (descriptor, active period or signals missing)") from None
        if isinstance(signals, dict):
            signals = signals.get("event_signals", [])
        if not isinstance(signals, list) or not signals:
            raise EventRefused("no signals")
        out: list[PriceWindow] = []
        cap = self.settings.max_price_sat_per_kwh
        for signal in signals:
            name, kind = signal.get("signal_name"), signal.get("signal_type")
            if name in PRICE_SIGNALS and kind in (ABSOLUTE, RELATIVE, MULTIPLIER):
                pass
            elif name in SIMPLE_SIGNALS:
                kind = LEVEL
            else:
                raise EventRefused(f"signal {name}/{kind} is not acted on here")
            t = _unix(active.get("dtstart"))
            intervals = signal.get("intervals") or []
            if not intervals:
                raise EventRefused(f"signal {name} has no intervals")
            for iv in intervals:
                start = _unix(iv["dtstart"]) if iv.get("dtstart") is not None else t
                end = start + _seconds(iv.get("duration"))
                t = end  # intervals follow each other from the active period's start
                v = _number(iv.get("signal_payload"))
                if kind == LEVEL:
                    if v not in (0, 1, 2, 3):
                        raise EventRefused(f"SIMPLE level {v:g}: expected 0, 1, 2 or 3")
                    out.append(PriceWindow(event_id, start, end, MULTIPLIER,
                                           float(self.settings.simple_multipliers[int(v)]), 0))
                elif kind == MULTIPLIER:
                    if not 0 <= v <= 1000:
                        raise EventRefused(f"price multiplier {v:g}: expected 0..1000")
                    out.append(PriceWindow(event_id, start, end, MULTIPLIER, v, 0))
                else:
                    sat = v * self.settings.price_scale
                    if (kind == ABSOLUTE and not 0 <= sat <= cap) or abs(sat) > cap:
                        raise EventRefused(f"price {v:g} ({sat:.0f} sat/kWh): expected 0..{cap} sat/kWh")
                    out.append(PriceWindow(event_id, start, end, kind, sat, 0))
        return out

    def receive(self, event: dict[str, Any], now: int) -> str:
        """An event (new or modified) from the VTN: its windows replace the
        event's earlier ones. OPT_IN when acted on, OPT_OUT when refused
        (nothing changed then, except that a refused modification also
        withdraws the event's earlier windows: the VTN no longer means them)."""
        event_id = str((event.get("event_descriptor") or {}).get("event_id", "?"))
        status = (event.get("event_descriptor") or {}).get("event_status")
        self.prune(now)
        self.windows = [w for w in self.windows if w.event_id != event_id]
        if status == "cancelled":
            return OPT_IN
        try:
            new = self.windows_of(event)
        except EventRefused as e:
            self.refused[event_id] = str(e)
            return OPT_OUT
        self._seq += 1
        self.windows.extend(PriceWindow(w.event_id, w.start, w.end, w.kind, w.value, self._seq) for w in new)
        return OPT_IN

    def cancel(self, event_id: str) -> None:
        self.windows = [w for w in self.windows if w.event_id != event_id]

    def prune(self, now: int) -> None:
        self.windows = [w for w in self.windows if w.end > now]

    def import_prices(self, tariff: Sequence[float], start: int, slot_s: int) -> list[float]:
        """The planner's import price per slot (slot i starts at start + i *
        slot_s): the tariff where no event applies, else the latest event's
        price at the slot's start."""
        out: list[float] = []
        for i, p in enumerate(tariff):
            t = start + i * slot_s
            live = [w for w in self.windows if w.start <= t < w.end]
            out.append(max(live, key=lambda w: w.seq).price(float(p)) if live else float(p))
        return out
