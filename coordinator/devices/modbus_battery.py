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

from .interface import DeviceRejected, DeviceUnavailable, DeviceUnsupported, SetpointError, check_setpoint
from .modbus import ModbusLink
from .registers import ModbusReadError, RegisterKind

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

    async def _write_steps(self, steps: Sequence[tuple[int, Sequence[int], Sequence[int]]]) -> None:
        """Write (address, new, old) blocks in order. A command spread over
        several registers is in force only as a whole: when a later write
        fails, the earlier ones are put back to `old` (last first), so the
        device keeps the previous command rather than half of the new one."""
        for k, (address, new, _) in enumerate(steps):
            try:
                await self._write(address, new)
            except (DeviceRejected, DeviceUnavailable) as e:
                undone = []
                for addr, _, old in reversed(steps[:k]):
                    try:
                        await self._write(addr, old)
                        undone.append(addr)
                    except (DeviceRejected, DeviceUnavailable):
                        raise type(e)(self.name, f"{e.detail}; restoring register {addr} failed too: the device may "
                                      "hold part of the new command until its hold time runs out") from None
                if undone:
                    raise type(e)(self.name, f"{e.detail}; registers {', '.join(map(str, undone))} restored") from None
                raise

    def check_setpoint(self, setpoint_w: float, max_charge_w: float, max_discharge_w: float) -> None:
        check_setpoint(self.name, setpoint_w, max_charge_w, max_discharge_w)

    def hold_seconds(self, until: float | None, most: int) -> int:
        """Seconds from now to `until` (the driver's hold_s when None),
        at least 1 and at most `most` (what the device's timer holds)."""
        now = self.clock()
        if until is None:
            span = self.hold_s
        else:
            if not math.isfinite(until) or until <= now:
                raise SetpointError(self.name, f"until={until!r} is not after now ({now:.0f}): a command must "
                                    "expire in the future")
            span = until - now
        return max(1, min(most, int(math.ceil(span))))
