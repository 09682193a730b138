"""A simulated home battery for the demo and for planner tests: the same
`Battery` interface as the real drivers, with conversion losses, a
standby draw, power and state-of-charge limits, and commands that expire.

Time comes from the clock passed in (the demo's conducted clock): the
battery integrates its power exactly, piece by piece, between the times it
is asked, so the result does not depend on how often it is polled. Within
one piece the power is constant: the command (until its `until`), or the
battery's own mode (idle) after it; a piece that reaches full or the
reserve stops there and the battery stays idle for the rest of it.

Energy is kept on both sides of the converter so the books balance
exactly: `charged_wh` (AC in) - `discharged_wh` (AC out) = stored change +
`loss_wh`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .interface import BatteryState, DeviceUnavailable, SetpointError, check_setpoint


@dataclass(frozen=True)
class SimulatedBatterySpec:
    capacity_wh: int = 10000
    max_charge_w: float = 5000.0
    max_discharge_w: float = 5000.0
    charge_efficiency: float = 0.95  # stored / AC in
    discharge_efficiency: float = 0.95  # AC out / taken from storage
    standby_w: float = 10.0  # BMS and converter at rest, drawn from storage (to empty, not just the reserve)
    min_soc_pct: float = 10.0  # no discharge below (backup reserve)
    max_soc_pct: float = 100.0
    initial_soc_pct: float = 50.0
    hold_s: float = 900.0  # a command without `until` holds this long

    def validate(self, where: str = "battery") -> "SimulatedBatterySpec":
        if self.capacity_wh <= 0:
            raise ValueError(f"{where}.capacity_wh={self.capacity_wh}: expected > 0")
        for k in ("max_charge_w", "max_discharge_w", "standby_w"):
            if not 0 <= getattr(self, k) <= 1e6:
                raise ValueError(f"{where}.{k}={getattr(self, k)}: expected 0..1000000")
        for k in ("charge_efficiency", "discharge_efficiency"):
            if not 0.5 <= getattr(self, k) <= 1.0:
                raise ValueError(f"{where}.{k}={getattr(self, k)}: expected 0.5..1.0")
        if not 0 <= self.min_soc_pct < self.max_soc_pct <= 100:
            raise ValueError(f"{where}.min_soc_pct/max_soc_pct: expected 0 <= min < max <= 100")
        if not 0 <= self.initial_soc_pct <= 100:
            raise ValueError(f"{where}.initial_soc_pct={self.initial_soc_pct}: expected 0..100")
        if not 1 <= self.hold_s <= 86400:
            raise ValueError(f"{where}.hold_s={self.hold_s}: expected 1..86400")
        return self


class SimulatedBattery:
    """`Battery` (interface.py) simulated."""

    def __init__(self, name: str, spec: SimulatedBatterySpec, clock: Callable[[], float]) -> None:
        spec.validate()
        self.name = name
        self.spec = spec
        self.clock = clock
        self.stored_wh = spec.capacity_wh * spec.initial_soc_pct / 100.0
        self.t = clock()
        self.setpoint_w: float | None = None
        self.until: float | None = None
        self.power_w = 0.0  # the power of the last piece (0 once full/empty)
        self.charged_wh = 0.0
        self.discharged_wh = 0.0
        self.loss_wh = 0.0
        self.offline_until = 0.0  # the demo's incidents: unreachable until then

    @property
    def _e_min(self) -> float:
        return self.spec.capacity_wh * self.spec.min_soc_pct / 100.0

    @property
    def _e_max(self) -> float:
        return self.spec.capacity_wh * self.spec.max_soc_pct / 100.0

    def advance(self, now: float | None = None) -> None:
        """Integrate up to `now` (the clock's time by default)."""
        now = self.clock() if now is None else now
        while self.t < now:
            end = now
            p = 0.0
            if self.setpoint_w is not None and self.until is not None:
                if self.until <= self.t:
                    self.setpoint_w = self.until = None  # expired: the battery's own mode (idle)
                    continue
                end = min(now, self.until)
                p = self.setpoint_w
            self._piece(p, end - self.t)
            self.t = end
        if self.until is not None and self.until <= self.t:
            self.setpoint_w = self.until = None
            self.power_w = 0.0

    def _piece(self, p: float, dt: float) -> None:
        """`dt` seconds at power `p`: the battery runs at `p` until full or
        at the reserve, then rests; the standby draw runs throughout."""
        s = self.spec
        stored_rate = p * s.charge_efficiency if p > 0 else (p / s.discharge_efficiency if p < 0 else 0.0)
        net = stored_rate - s.standby_w  # W into storage while running
        if p > 0:
            run = min(dt, max(0.0, self._e_max - self.stored_wh) / net * 3600.0) if net > 0 else dt
            if self.stored_wh >= self._e_max:
                run = 0.0
        elif p < 0:
            run = min(dt, max(0.0, self.stored_wh - self._e_min) / -net * 3600.0)
        else:
            run = 0.0
        h = run / 3600.0
        ac = p * h  # + in, - out
        if p > 0:
            self.charged_wh += ac
        else:
            self.discharged_wh -= ac
        self.loss_wh += ac - net * h
        self.stored_wh = min(self._e_max, max(0.0, self.stored_wh + net * h))
        drain = min(self.stored_wh, s.standby_w * (dt - run) / 3600.0)  # at rest
        self.stored_wh -= drain
        self.loss_wh += drain
        self.power_w = p if run >= dt else 0.0

    def _reachable(self) -> None:
        if self.clock() < self.offline_until:
            raise DeviceUnavailable(self.name, "simulated outage: no answer")

    def _state(self) -> BatteryState:
        s = self.spec
        eps = 1e-6
        return BatteryState(
            soc_pct=self.stored_wh / s.capacity_wh * 100.0, power_w=self.power_w,
            max_charge_w=s.max_charge_w if self.stored_wh < self._e_max - eps else 0.0,
            max_discharge_w=s.max_discharge_w if self.stored_wh > self._e_min + eps else 0.0,
            capacity_wh=s.capacity_wh, t=self.t, setpoint_w=self.setpoint_w, min_soc_pct=s.min_soc_pct,
            max_soc_pct=s.max_soc_pct)

    async def state(self) -> BatteryState:
        self._reachable()
        self.advance()
        return self._state()

    async def command(self, setpoint_w: float, until: float | None = None) -> float:
        self._reachable()
        self.advance()
        st = self._state()
        check_setpoint(self.name, setpoint_w, st.max_charge_w, st.max_discharge_w)
        now = self.t
        if until is not None and not (math.isfinite(until) and until > now):
            raise SetpointError(self.name, f"until={until!r} is not after now ({now:.0f})")
        self.setpoint_w = float(round(setpoint_w))
        self.until = now + self.spec.hold_s if until is None else until
        self.power_w = self.setpoint_w
        return self.setpoint_w

    async def release(self) -> None:
        self._reachable()
        self.advance()
        self.setpoint_w = self.until = None
        self.power_w = 0.0
