"""The planner in time: decisions at interval boundaries, setpoints sent to
the devices within what they accept, failures that do not stop it.

The battery and charger here are in-test stand-ins shaped like
coordinator/devices/interface.py's Battery and EvCharger (the drivers
live on another branch); they record what they were told."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.planner.journal import Journal
from microgrid.coordinator.planner.load import LoadForecaster
from microgrid.coordinator.planner.model import FOLLOW, SETPOINT, EvNeed
from microgrid.coordinator.planner.scheduler import FALLBACK, OPTIMAL, Scheduler
from microgrid.coordinator.planner.service import PlannerService
from microgrid.coordinator.planner.settings import PlannerSettings

MIDNIGHT = 1_781_481_600


@dataclass(frozen=True)
class State:  # the fields of interface.BatteryState the planner reads
    soc_pct: float
    capacity_wh: int
    max_charge_w: float
    max_discharge_w: float
    min_soc_pct: float = 10.0
    max_soc_pct: float = 100.0


@dataclass
class FakeBattery:
    state_now: State
    name: str = "bat1"
    commands: list[tuple[float, float | None]] = field(default_factory=list)
    released: int = 0
    broken: bool = False

    async def state(self) -> State:
        if self.broken:
            raise OSError("modbus timeout")
        return self.state_now

    async def command(self, setpoint_w: float, until: float | None = None) -> float:
        self.commands.append((setpoint_w, until))
        return setpoint_w

    async def release(self) -> None:
        self.released += 1


@dataclass
class FakeCharger:
    charger_id: str = "cp1"
    limits: list[tuple[float, float | None]] = field(default_factory=list)
    cleared: int = 0

    async def set_limit(self, limit_w: float, until: float | None = None, evse_id: int = 0) -> Any:
        self.limits.append((limit_w, until))

    async def clear_limit(self, evse_id: int = 0) -> None:
        self.cleared += 1


class StepClock:
    """Virtual time: sleeping moves it on."""

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.t += s
        await asyncio.sleep(0)


def make(tmp_path: Path) -> Scheduler:
    market = MarketSettings(zone="elm", interval_s=900, import_tariff_sat_per_kwh=250, export_tariff_sat_per_kwh=40,
                            prices={"buy": 300}).validate()
    planner = PlannerSettings(enabled=True, pv_kwp=0.0,
                              import_tariff={"time_of_day": {"00:00": 100, "07:00": 250, "17:00": 400,
                                                             "21:00": 250}}).validate()
    return Scheduler(planner, market, LoadForecaster(lambda a, b: 200.0), lambda: [], Journal(tmp_path / "p.db"))


def test_each_step_commands_the_battery_within_its_limits_and_the_charger_until_the_slot_ends(tmp_path: Path) -> None:
    clock = StepClock(MIDNIGHT + 3600 - 30)
    battery = FakeBattery(State(soc_pct=10.0, capacity_wh=10_000, max_charge_w=1200.0, max_discharge_w=3000.0))
    charger = FakeCharger()
    ev = EvNeed(energy_wh=6000, deadline=MIDNIGHT + 6 * 3600, max_power_w=7400)
    svc = PlannerService(make(tmp_path), clock, battery, charger, lambda now: ev, sleep=clock.sleep)
    d = asyncio.run(svc.step())
    assert d.status == OPTIMAL and d.slot_start == MIDNIGHT + 3600
    assert d.battery_mode == SETPOINT  # charging from the grid: commanded
    [(w, until)] = battery.commands
    assert 0 < w <= 1200.0  # charging at night, never beyond what the battery accepts now
    assert until == MIDNIGHT + 3600 + 1800
    [(limit, until)] = charger.limits
    assert limit == d.ev_w and until == MIDNIGHT + 3600 + 1800


def test_an_unreadable_battery_is_planned_without_and_an_infeasible_ev_releases_the_charger(tmp_path: Path) -> None:
    clock = StepClock(MIDNIGHT)
    battery = FakeBattery(State(50.0, 10_000, 3000.0, 3000.0), broken=True)
    charger = FakeCharger()
    ev = EvNeed(energy_wh=90_000, deadline=MIDNIGHT + 3600, max_power_w=7400)
    svc = PlannerService(make(tmp_path), clock, battery, charger, lambda now: ev, sleep=clock.sleep)
    d = asyncio.run(svc.step())
    assert d.status == FALLBACK and "EV needs" in d.reason
    assert battery.commands == [] and svc.errors == 1  # not read: not commanded
    assert charger.cleared == 1 and charger.limits == []  # the charger's own default


def test_run_decides_before_every_boundary_until_stopped(tmp_path: Path) -> None:
    clock = StepClock(MIDNIGHT + 100)
    battery = FakeBattery(State(50.0, 10_000, 3000.0, 3000.0))
    decisions = []
    stop = asyncio.Event()

    def seen(d: Any) -> None:
        decisions.append(d)
        if len(decisions) == 3:
            stop.set()

    svc = PlannerService(make(tmp_path), clock, battery, sleep=clock.sleep, on_decision=seen)
    asyncio.run(asyncio.wait_for(svc.run(stop), 60))
    assert [d.slot_start for d in decisions] == [MIDNIGHT + 900, MIDNIGHT + 1800, MIDNIGHT + 2700]
    assert len(battery.commands) + battery.released == 3
    assert svc.scheduler.journal is not None and svc.scheduler.journal.count() == 3


def test_a_slot_the_batterys_own_self_consumption_handles_releases_it(tmp_path: Path) -> None:
    # The evening peak, a half-full battery, no EV: the plan covers the
    # house from the battery (nothing bought), which self-consumption does.
    clock = StepClock(MIDNIGHT + 18 * 3600 - 30)
    battery = FakeBattery(State(60.0, 10_000, 3000.0, 3000.0))
    svc = PlannerService(make(tmp_path), clock, battery, sleep=clock.sleep)
    d = asyncio.run(svc.step())
    assert d.battery_mode == FOLLOW and d.battery_w < 0
    assert battery.released == 1 and battery.commands == []
