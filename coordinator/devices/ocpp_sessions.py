"""Charging sessions and meter values as the central system sees them,
the same for OCPP 1.6 and 2.0.1: no I/O, no websockets, only the
bookkeeping (ocpp_central.py feeds it from both protocol versions).

Meter values arrive as the `ocpp` library hands them over (snake_case
dicts): 1.6 carries each value as a string with a `unit`, 2.0.1 as a
number with `unit_of_measure` {unit, multiplier}. A sample that does not
parse (not a number, NaN, a negative energy register, a power beyond a
megawatt, a timestamp that is not ISO 8601) is dropped and counted, never
stored as a number: the charger is a device on someone's driveway, its
input is untrusted.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from .interface import ChargingSession, MeterValue

ENERGY = "Energy.Active.Import.Register"  # the default measurand when none is given
POWER = "Power.Active.Import"
SOC = "SoC"
_UNIT_SCALE = {"Wh": 1.0, "kWh": 1000.0, "W": 1.0, "kW": 1000.0, "Percent": 1.0}
MAX_ENERGY_WH = 1e12
MAX_POWER_W = 1e6


def parse_time(value: Any) -> float | None:
    """Unix seconds from an OCPP timestamp (ISO 8601, 'Z' or an offset);
    None if it does not parse. A time without a zone is taken as UTC."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def iso(t: float) -> str:
    """An OCPP timestamp (UTC, 'Z') for Unix seconds."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _number(sample: dict[str, Any]) -> float | None:
    raw = sample.get("value")
    if isinstance(raw, bool):
        return None
    try:
        v = float(raw) if isinstance(raw, (int, float, str)) and (not isinstance(raw, str) or len(raw) <= 32) else None
    except ValueError:
        return None
    if v is None or math.isnan(v) or math.isinf(v):
        return None
    uom = sample.get("unit_of_measure")
    if isinstance(uom, dict):  # 2.0.1
        unit = uom.get("unit", "Wh")
        mult = uom.get("multiplier", 0)
        if isinstance(mult, bool) or not isinstance(mult, int) or not -3 <= mult <= 6:
            return None
        v *= 10.0**mult
    else:
        unit = sample.get("unit")
    if unit is None:
        unit = "Percent" if sample.get("measurand") == SOC else ("W" if sample.get("measurand") == POWER else "Wh")
    scale = _UNIT_SCALE.get(unit)
    return None if scale is None else v * scale


def parse_meter_values(charger_id: str, evse_id: int, raw: Any, session_id: str | None) -> tuple[list[MeterValue], int]:
    """MeterValue per entry of an OCPP meterValue list, and the number of
    samples (or entries) dropped as malformed."""
    out: list[MeterValue] = []
    dropped = 0
    if not isinstance(raw, list):
        return out, 1
    for entry in raw:
        if not isinstance(entry, dict):
            dropped += 1
            continue
        t = parse_time(entry.get("timestamp"))
        samples = entry.get("sampled_value")
        if t is None or not isinstance(samples, list):
            dropped += 1
            continue
        energy: float | None = None
        power: float | None = None
        soc: float | None = None
        phase_power: dict[str, float] = {}
        for s in samples:
            if not isinstance(s, dict):
                dropped += 1
                continue
            measurand = s.get("measurand") or ENERGY
            if measurand not in (ENERGY, POWER, SOC):
                continue  # currents, voltages, temperatures: not ours to judge
            v = _number(s)
            phase = s.get("phase")
            if v is None:
                dropped += 1
            elif measurand == ENERGY:
                if not 0 <= v <= MAX_ENERGY_WH:
                    dropped += 1
                elif phase is None:
                    energy = v
            elif measurand == POWER:
                if not -MAX_POWER_W <= v <= MAX_POWER_W:
                    dropped += 1
                elif phase is None:
                    power = v
                elif isinstance(phase, str) and phase[:2] in ("L1", "L2", "L3"):
                    phase_power[phase[:2]] = v
            else:
                if not 0 <= v <= 100:
                    dropped += 1
                else:
                    soc = v
        if power is None and phase_power:
            power = sum(phase_power.values())
        if energy is None and power is None and soc is None:
            continue
        out.append(MeterValue(charger_id, evse_id, t, None if energy is None else int(energy + 0.5), power, soc,
                              session_id))
    return out, dropped


class SessionBook:
    """Sessions by (charger, session id), and the last `keep` meter values.
    1.6 transaction ids are ours to give: they count up from the clock's
    seconds at start, so a restarted coordinator does not reuse the ids a
    charge point may still hold from before."""

    def __init__(self, keep: int = 10000, start_id: int = 1, keep_sessions: int = 10000) -> None:
        self._sessions: dict[tuple[str, str], ChargingSession] = {}
        self._values: deque[MeterValue] = deque(maxlen=keep)
        self._seen: dict[tuple[str, int, str | None, float], None] = {}  # keys of the samples kept, oldest first
        self._ids = itertools.count(max(1, start_id % 2_000_000_000))
        self.keep_sessions = keep_sessions
        self.dropped_samples = 0

    def next_transaction_id(self) -> int:
        return next(self._ids)

    def get(self, charger_id: str, session_id: str) -> ChargingSession | None:
        return self._sessions.get((charger_id, session_id))

    def start(self, charger_id: str, evse_id: int, session_id: str, id_token: str, t: float,
              meter_start_wh: int | None) -> ChargingSession:
        s = ChargingSession(session_id, charger_id, evse_id, id_token, t, meter_start_wh)
        self._put(s)
        return s

    def ensure(self, charger_id: str, evse_id: int, session_id: str, id_token: str, t: float) -> ChargingSession:
        """The session, started now if this is the first we hear of it (a
        2.0.1 transaction whose Started event was lost)."""
        return self.get(charger_id, session_id) or self.start(charger_id, evse_id, session_id, id_token, t, None)

    def find_repeat(self, charger_id: str, evse_id: int, id_token: str, t: float,
                    meter_start_wh: int | None) -> ChargingSession | None:
        """An active session this StartTransaction repeats (a charger that
        lost our answer sends it again): same connector, token, time and
        meter start."""
        for s in self._sessions.values():
            if (s.charger_id == charger_id and s.active and s.evse_id == evse_id and s.id_token == id_token
                    and s.started_t == t and s.meter_start_wh == meter_start_wh):
                return s
        return None

    def add_values(self, values: Iterable[MeterValue]) -> tuple[list[MeterValue], ChargingSession | None]:
        """Keep the samples; update their session's energy and power. A
        sample already kept (the same charger, EVSE, session and time: a
        message sent again after a lost answer) is not kept twice.
        Returns the samples kept and the (last) session updated."""
        updated = None
        kept = []
        for mv in values:
            key = (mv.charger_id, mv.evse_id, mv.session_id, mv.t)
            if key in self._seen:
                continue
            kept.append(mv)
            self._seen[key] = None
            if len(self._seen) > self._values.maxlen:  # type: ignore[operator]
                del self._seen[next(iter(self._seen))]
            self._values.append(mv)
            if mv.session_id is None:
                continue
            s = self.get(mv.charger_id, mv.session_id)
            if s is None:
                continue
            changes: dict[str, Any] = {}
            if mv.energy_wh is not None:
                start = s.meter_start_wh
                if start is None:  # the first register seen counts as the start
                    changes["meter_start_wh"] = start = mv.energy_wh
                changes["energy_wh"] = max(0, mv.energy_wh - start)
            if mv.power_w is not None:
                changes["power_w"] = mv.power_w
            if changes:
                updated = replace(s, **changes)
                self._put(updated)
        return kept, updated

    def stop(self, charger_id: str, session_id: str, t: float, meter_stop_wh: int | None, reason: str | None,
             evse_id: int = 0, id_token: str = "") -> ChargingSession:
        s = self.get(charger_id, session_id)
        if s is None:  # a transaction from before a restart: keep what we learn
            s = ChargingSession(session_id, charger_id, evse_id, id_token, t, None)
        energy = s.energy_wh
        if meter_stop_wh is not None and s.meter_start_wh is not None:
            energy = max(0, meter_stop_wh - s.meter_start_wh)
        s = replace(s, stopped_t=t, meter_stop_wh=meter_stop_wh, energy_wh=energy, power_w=0.0,
                    stop_reason=reason or "Local")
        self._put(s)
        return s

    def set_limit(self, charger_id: str, evse_id: int, limit_w: float | None) -> None:
        for key, s in list(self._sessions.items()):
            if s.charger_id == charger_id and s.active and (evse_id == 0 or s.evse_id == evse_id):
                self._sessions[key] = replace(s, limit_w=limit_w)

    def sessions(self, charger_id: str | None = None, active_only: bool = False) -> Sequence[ChargingSession]:
        return [s for s in self._sessions.values()
                if (charger_id is None or s.charger_id == charger_id) and (s.active or not active_only)]

    def meter_values(self, charger_id: str | None = None, since: float | None = None) -> Sequence[MeterValue]:
        return [v for v in self._values
                if (charger_id is None or v.charger_id == charger_id) and (since is None or v.t > since)]

    def _put(self, s: ChargingSession) -> None:
        self._sessions[(s.charger_id, s.session_id)] = s  # an update keeps its place: oldest first
        if len(self._sessions) > self.keep_sessions:  # bounded: the oldest finished one goes, else the oldest
            victim = next((k for k, old in self._sessions.items() if not old.active), next(iter(self._sessions)))
            del self._sessions[victim]
