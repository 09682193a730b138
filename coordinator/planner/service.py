"""The planner in time: a decision at every market interval boundary, its
setpoints sent to the devices. Wiring for app.py; the decisions are made
in scheduler.py.

Devices are reached through what coordinator/devices/interface.py
defines (a `Battery` with state()/command(), an `EvCharger` with
set_limit()/clear_limit()), duck-typed here so the planner does not depend
on the drivers. A slot whose plan is what the battery's own
self-consumption does (Plan.battery_mode FOLLOW) hands the battery back to
it (release()), so it follows the real load and PV within the slot; any
other is commanded. Each setpoint is sent with an expiry (`until`: the slot's
end plus one interval of grace), so a coordinator that stops deciding
leaves the devices to their own behaviour instead of a stale command.

A failed read or command is logged and the loop goes on: a battery that
cannot be read is planned without (None), a command that fails leaves the
device as it was until its last setpoint expires.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Protocol

from ..clock import Clock, sleep_until, wait_or_stop
from .model import FOLLOW, BatterySpec, EvNeed
from .scheduler import Decision, Scheduler

log = logging.getLogger("microgrid.planner.service")


class BatteryLike(Protocol):
    name: str

    async def state(self) -> Any: ...

    async def command(self, setpoint_w: float, until: float | None = None) -> float: ...

    async def release(self) -> None: ...


class ChargerLike(Protocol):
    charger_id: str

    async def set_limit(self, limit_w: float, until: float | None = None, evse_id: int = 0) -> Any: ...

    async def clear_limit(self, evse_id: int = 0) -> None: ...


# The EV's need now (from the household's app or the car), or None.
EvNeedSource = Callable[[int], EvNeed | None]


class PlannerService:
    def __init__(self, scheduler: Scheduler, clock: Clock, battery: BatteryLike | None = None,
                 charger: ChargerLike | None = None, ev_need: EvNeedSource | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 on_decision: Callable[[Decision], Any] | None = None) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self.battery = battery
        self.charger = charger
        self.ev_need = ev_need
        self._sleep = sleep
        self.on_decision = on_decision
        self.errors = 0

    async def battery_spec(self) -> tuple[BatterySpec | None, Any]:
        """(the battery as the plan sees it, the driver's state) or (None, None)."""
        if self.battery is None:
            return None, None
        s = self.scheduler.settings
        try:
            state = await self.battery.state()
            spec = BatterySpec.from_state(state, s.battery_charge_efficiency, s.battery_discharge_efficiency,
                                          s.degradation_sat_per_kwh)
        except Exception as e:  # unreadable or nonsensical: plan without it this time
            self.errors += 1
            log.warning("battery %s not read, planned without it: %s", getattr(self.battery, "name", "?"), e)
            return None, None
        return spec, state

    async def step(self) -> Decision:
        """One decision now, its setpoints sent."""
        now = int(self.clock.now())
        spec, state = await self.battery_spec()
        ev = self.ev_need(now) if self.ev_need is not None else None
        decision = self.scheduler.decide(now, spec, ev)
        until = float(decision.slot_start + 2 * self.scheduler.market.interval_s)
        if self.battery is not None and state is not None:
            # Within what the battery accepts now (the interface refuses more).
            w = max(-float(state.max_discharge_w), min(float(state.max_charge_w), decision.battery_w))
            try:
                if decision.battery_mode == FOLLOW:
                    await self.battery.release()  # its self-consumption follows the real load and PV
                else:
                    await self.battery.command(w, until=until)
            except Exception as e:
                self.errors += 1
                log.warning("battery %s refused %s: %s", getattr(self.battery, "name", "?"),
                            decision.battery_mode if decision.battery_mode == FOLLOW else f"{w:.0f} W", e)
        if self.charger is not None:
            try:
                if decision.ev_w is None:
                    await self.charger.clear_limit()
                else:
                    await self.charger.set_limit(max(0.0, decision.ev_w), until=until)
            except Exception as e:
                self.errors += 1
                log.warning("charger %s: %s", getattr(self.charger, "charger_id", "?"), e)
        if self.on_decision is not None:
            self.on_decision(decision)
        return decision

    async def run(self, stop: asyncio.Event) -> None:
        """A step shortly before every interval boundary (the setpoints are
        for the slot that starts there), until `stop`."""
        step = self.scheduler.market.interval_s
        lead = min(30, step // 10)
        boundary = (int(self.clock.now()) // step + 1) * step
        while not stop.is_set():
            if await wait_or_stop(sleep_until(self.clock, boundary - lead, self._sleep), stop):
                break
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.errors += 1
                log.exception("planner step failed")
            # The next boundary still ahead (a step that overran one skips it).
            boundary = max(boundary + step, (int(self.clock.now()) + lead) // step * step + step)
