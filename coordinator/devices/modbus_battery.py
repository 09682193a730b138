"""What every battery driven over Modbus shares: reads and writes through
one `ModbusLink` (the bus handling the meters' poller uses), Modbus
failures turned into the device errors of interface.py, the setpoint
checked against the limits just read, and hold times from `until`.

Error mapping, so the planner can tell "try later" from "never":

- no answer, lost connection, short answer -> DeviceUnavailable
- a Modbus exception answering a write -> DeviceRejected (a read-only or
  locked register, a value out of the device's range)
- a Modbus exception answering a read of a register the map needs ->
  DeviceUnsupported
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from .interface import DeviceRejected, DeviceUnavailable, DeviceUnsupported, SetpointError
from .modbus import ModbusLink
from .registers import ModbusReadError, RegisterKind

# A setpoint this much beyond a limit still passes: limits are read back
# from scaled registers and a plan computed from them must not bounce off
# the last watt.
LIMIT_TOLERANCE_W = 0.5


class ModbusBatteryBase:
    def __init__(self, name: str, link: ModbusLink, unit: int, clock: Callable[[], float], hold_s: float) -> None:
        self.name = name
        self.link = link
        self.unit = unit
        self.clock = clock
        self.hold_s = hold_s

    async def _read(self, kind: RegisterKind, address: int, count: int) -> list[int]:
        try:
            return await self.link.read(kind, address, count, self.unit)
        except ModbusReadError as e:
            if e.kind == "exception":
                raise DeviceUnsupported(self.name, str(e)) from None
            raise DeviceUnavailable(self.name, str(e)) from None

    async def _write(self, address: int, values: Sequence[int]) -> None:
        try:
            await self.link.write(address, values, self.unit)
        except ModbusReadError as e:
            if e.kind == "exception":
                raise DeviceRejected(self.name, f"{e}; nothing was changed") from None
            raise DeviceUnavailable(self.name, f"{e}; the command may or may not have reached the device, "
                                    "the next state() tells") from None

    def check_setpoint(self, setpoint_w: float, max_charge_w: float, max_discharge_w: float) -> None:
        """SetpointError unless -max_discharge_w <= setpoint_w <= max_charge_w."""
        if not isinstance(setpoint_w, (int, float)) or isinstance(setpoint_w, bool) or math.isnan(setpoint_w):
            raise SetpointError(self.name, f"setpoint {setpoint_w!r}: expected a number of watts")
        if setpoint_w > max_charge_w + LIMIT_TOLERANCE_W:
            raise SetpointError(self.name, f"setpoint {setpoint_w:.0f} W: the battery accepts at most "
                                f"{max_charge_w:.0f} W of charge now")
        if setpoint_w < -max_discharge_w - LIMIT_TOLERANCE_W:
            raise SetpointError(self.name, f"setpoint {setpoint_w:.0f} W: the battery delivers at most "
                                f"{max_discharge_w:.0f} W of discharge now")

    def hold_seconds(self, until: float | None, most: int) -> int:
        """Seconds from now to `until` (the driver's hold_s when None),
        at least 1 and at most `most` (what the device's timer holds)."""
        now = self.clock()
        if until is None:
            span = self.hold_s
        else:
            if math.isnan(until) or until <= now:
                raise SetpointError(self.name, f"until={until!r} is not after now ({now:.0f}): a command must "
                                    "expire in the future")
            span = until - now
        return max(1, min(most, int(math.ceil(span))))
