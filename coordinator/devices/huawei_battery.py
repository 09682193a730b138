"""A home battery behind a Huawei SUN2000 hybrid inverter (LUNA2000
battery), through the inverter's own register map: the common hybrid
inverter that speaks no SunSpec storage model. Holding registers
(function 0x03 to read, 0x10 to write), big-endian words, one unit id
(1 on the inverter's own Modbus-TCP or RS-485, as configured on it):

    address  type  gain  what
    37046    U32   1     maximum charge power the battery allows, W
    37048    U32   1     maximum discharge power the battery allows, W
    37758    U32   1     rated capacity, Wh (0: no battery connected)
    37760    U16   10    state of charge, %
    37762    U16   -     running status: 0 offline, 1 standby, 2 running, 3 fault, 4 sleep
    37765    I32   1     charge/discharge power, W (> 0 charging, < 0 discharging)
    47075    U32   1     maximum charging power setting, W
    47077    U32   1     maximum discharging power setting, W
    47081    U16   10    charging cut-off capacity, % (charging stops here)
    47082    U16   10    discharging cut-off capacity, % (the reserve)
    47083    U16   1     forced charge/discharge period, minutes (0..1440)
    47100    U16   -     forcible charge/discharge: 0 stop, 1 charge, 2 discharge
    47246    U16   -     forcible charge/discharge setting mode: 0 by duration, 1 to a target SoC
    47247    U32   1     forcible charge power, W
    47249    U32   1     forcible discharge power, W

(Huawei's "SUN2000 Modbus Interface Definitions"; the same addresses are
used by the open huawei-solar integrations.)

Command: mode "by duration" with the period in whole minutes up to
`until` (rounded up, at most 1440: the inverter returns to its own working
mode when it runs out), the power in 47247 or 47249, then 47100 = charge
or discharge; 0 W is a forcible charge at 0 W, which holds the battery
idle. Read back before reporting success. `release()` writes 47100 = 0.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

from .interface import BatteryState, DeviceError, DeviceRejected, DeviceUnsupported
from .modbus import ModbusLink
from .modbus_battery import ModbusBatteryBase
from .registers import u16, u32

log = logging.getLogger("microgrid.devices.battery")

REG_MAX_CHARGE = 37046
REG_CAPACITY = 37758
REG_SETTINGS = 47075
REG_PERIOD = 47083
REG_FORCE = 47100
REG_FORCE_MODE = 47246
STOP, CHARGE, DISCHARGE = 0, 1, 2
MAX_PERIOD_MIN = 1440
_STATUS = {0: "offline", 1: "standby", 2: "ok", 3: "fault", 4: "sleep"}


def _i32(regs: Sequence[int], i: int) -> int:
    v = u32(regs, i)
    return v - (1 << 32) if v & 0x80000000 else v


def _u32_regs(v: int) -> list[int]:
    return [(v >> 16) & 0xFFFF, v & 0xFFFF]


class HuaweiBattery(ModbusBatteryBase):
    """`Battery` (interface.py) over a Huawei SUN2000's register map."""

    def __init__(self, name: str, link: ModbusLink, unit: int = 1, *, clock: Callable[[], float],
                 hold_s: float = 900.0) -> None:
        super().__init__(name, link, unit, clock, hold_s)

    async def _read_state(self) -> tuple[BatteryState, list[int]]:
        limits = await self._read("holding", REG_MAX_CHARGE, 4)  # 37046..37049
        bat = await self._read("holding", REG_CAPACITY, 9)  # 37758..37766
        settings = await self._read("holding", REG_SETTINGS, 8)  # 47075..47082
        force = await self._read("holding", REG_FORCE, 1)
        capacity = u32(bat, 0)
        if capacity == 0 or capacity == 0xFFFFFFFF:
            raise DeviceUnsupported(self.name, "rated capacity (37758) is 0: no battery connected to the inverter")
        soc_raw = u16(bat, 2)
        if soc_raw > 1000:
            raise DeviceError(self.name, f"state of charge register 37760 holds {soc_raw}: expected 0..1000 (0.1 %)")
        soc = soc_raw / 10.0
        status_raw = u16(bat, 4)
        status = _STATUS.get(status_raw, f"status {status_raw}")
        power = float(_i32(bat, 7))
        max_charge = _least(u32(limits, 0), u32(settings, 0))
        max_discharge = _least(u32(limits, 2), u32(settings, 2))
        max_soc = u16(settings, 6) / 10.0
        min_soc = u16(settings, 7) / 10.0
        if not 0 < max_soc <= 100:
            max_soc = 100.0
        if not 0 <= min_soc < 100:
            min_soc = 0.0
        if status_raw in (0, 3):
            max_charge = max_discharge = 0
        if soc <= min_soc:
            max_discharge = 0
        if soc >= max_soc:
            max_charge = 0
        setpoint = await self._setpoint(u16(force, 0))
        st = BatteryState(soc_pct=soc, power_w=power, max_charge_w=float(max_charge),
                          max_discharge_w=float(max_discharge), capacity_wh=capacity, t=self.clock(),
                          setpoint_w=setpoint, min_soc_pct=min_soc, max_soc_pct=max_soc, status=status)
        return st, bat

    async def _setpoint(self, force: int) -> float | None:
        if force not in (CHARGE, DISCHARGE):
            return None
        regs = await self._read("holding", REG_FORCE_MODE, 5)  # 47246..47250
        if u16(regs, 0) != 0:
            return None  # a target-SoC command (not ours): no fixed power
        return float(u32(regs, 1)) if force == CHARGE else -float(u32(regs, 3))

    async def state(self) -> BatteryState:
        return (await self._read_state())[0]

    async def command(self, setpoint_w: float, until: float | None = None) -> float:
        st, _ = await self._read_state()
        self.check_setpoint(setpoint_w, st.max_charge_w, st.max_discharge_w)
        if st.status in ("offline", "fault"):
            raise DeviceRejected(self.name, f"the battery is {st.status}; nothing was sent")
        minutes = max(1, min(MAX_PERIOD_MIN, math.ceil(self.hold_seconds(until, MAX_PERIOD_MIN * 60) / 60)))
        watts = int(round(abs(setpoint_w)))
        direction = CHARGE if setpoint_w >= 0 or watts == 0 else DISCHARGE
        charge_w, discharge_w = (watts, 0) if direction == CHARGE else (0, watts)
        block = [0] + _u32_regs(charge_w) + _u32_regs(discharge_w)  # 47246 by duration, 47247, 47249
        old_block = await self._read("holding", REG_FORCE_MODE, 5)
        old_period = await self._read("holding", REG_PERIOD, 1)
        await self._write_steps([(REG_FORCE_MODE, block, old_block), (REG_PERIOD, [minutes], old_period),
                                 (REG_FORCE, [direction], [])])
        back = await self._read("holding", REG_FORCE_MODE, 5)
        period = await self._read("holding", REG_PERIOD, 1)
        force = await self._read("holding", REG_FORCE, 1)
        if list(back) != block or period[0] != minutes or force[0] != direction:
            raise DeviceRejected(self.name, f"the inverter did not keep the command (47246.. {list(back)}, 47083 "
                                 f"{period[0]}, 47100 {force[0]}; wrote {block}, {minutes}, {direction})")
        accepted = float(watts) if direction == CHARGE else -float(watts)
        log.debug("battery %s: %+.0f W for %d min", self.name, accepted, minutes)
        return accepted

    async def release(self) -> None:
        await self._write(REG_FORCE, [STOP])


def _least(*values: int) -> int:
    have = [v for v in values if 0 < v < 0xFFFFFFFF]
    return min(have) if have else 0

