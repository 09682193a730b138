"""The simulated battery: losses, limits, expiring commands, books that
balance, all on a clock passed in."""

from __future__ import annotations

import asyncio
import math
from typing import Any, Awaitable

import pytest

from microgrid.coordinator.devices.interface import Battery, DeviceUnavailable, SetpointError
from microgrid.coordinator.devices.simulated import SimulatedBattery, SimulatedBatterySpec

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def balanced(b: SimulatedBattery, start_wh: float) -> None:
    assert b.charged_wh - b.discharged_wh == pytest.approx(b.stored_wh - start_wh + b.loss_wh, abs=1e-6)


def test_charge_with_losses_until_full_then_idle() -> None:
    clock = Clock()
    b = SimulatedBattery("sim", SimulatedBatterySpec(), clock)
    assert isinstance(b, Battery)

    async def go() -> None:
        assert await b.command(5000.0, until=T0 + 7200) == 5000.0
        clock.t = T0 + 3600
        st = await b.state()
        # 5000 Wh in at 95 %, 10 W standby for the hour.
        assert st.soc_pct == pytest.approx((5000 + 5000 * 0.95 - 10) / 100)
        assert (st.power_w, st.setpoint_w) == (5000.0, 5000.0)
        clock.t = T0 + 7200
        st = await b.state()
        # Full after (10000 - 9740) / 4740 h; the rest of the hour at rest, standby only.
        t_full = 260 / 4740 * 3600
        assert st.soc_pct == pytest.approx((10000 - 10 * (3600 - t_full) / 3600) / 100)
        assert st.power_w == 0.0 and b.charged_wh == pytest.approx(5000 + 5000 * t_full / 3600)
        assert st.setpoint_w is None  # expired at `until`
        balanced(b, 5000)

    run(go())


def test_commands_expire_and_discharge_stops_at_the_reserve() -> None:
    clock = Clock()
    b = SimulatedBattery("sim", SimulatedBatterySpec(standby_w=0, initial_soc_pct=20), clock)

    async def go() -> None:
        await b.command(-1900.0, until=T0 + 1800)
        clock.t = T0 + 3600  # the command held half of it
        st = await b.state()
        assert b.discharged_wh == pytest.approx(950.0) and st.setpoint_w is None
        assert st.soc_pct == pytest.approx((2000 - 950 / 0.95) / 100)  # 10 %: exactly the reserve
        assert st.max_discharge_w == 0.0
        with pytest.raises(SetpointError, match="at most 0 W of discharge"):
            await b.command(-1.0)
        # Round trip: 1000 Wh stored back costs 1000 / 0.95 Wh in.
        await b.command(1000 / 0.95, until=clock.t + 3600)
        clock.t += 3600
        await b.state()
        assert b.stored_wh == pytest.approx(1000.0 + round(1000 / 0.95) * 0.95)  # 1 W resolution
        assert b.discharged_wh / b.charged_wh == pytest.approx(950 / round(1000 / 0.95))
        balanced(b, 2000)

    run(go())


def test_bad_commands_and_outages() -> None:
    clock = Clock()
    b = SimulatedBattery("sim", SimulatedBatterySpec(max_charge_w=3000), clock)

    async def go() -> None:
        for bad in (3001.0, -5001.0, math.nan):
            with pytest.raises(SetpointError):
                await b.command(bad)
        for bad_until in (T0, math.inf, math.nan):
            with pytest.raises(SetpointError, match="not after now"):
                await b.command(100.0, until=bad_until)
        assert b.setpoint_w is None
        await b.command(1000.0)
        assert b.until == T0 + 900  # hold_s
        b.offline_until = T0 + 60
        with pytest.raises(DeviceUnavailable):
            await b.state()
        clock.t = T0 + 60
        assert (await b.state()).setpoint_w == 1000.0
        await b.release()
        assert (await b.state()).setpoint_w is None
        with pytest.raises(ValueError, match="charge_efficiency"):
            SimulatedBatterySpec(charge_efficiency=1.5).validate()

    run(go())
