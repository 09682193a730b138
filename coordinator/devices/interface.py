"""The devices a household's plan commands: home batteries and EV chargers.

This is the one contract between the device drivers (SunSpec/vendor
Modbus batteries, the simulated battery, OCPP chargers) and whoever
decides what they do (the scheduler). The planner imports only this
module; drivers implement it.

Conventions, the same everywhere:

- Power in watts, signed from the house's point of view: **positive
  charges** the battery / EV (the device draws from the house, like an
  import), **negative discharges** the battery into the house (like an
  export). An EV charger only ever draws (>= 0).
- Energy in whole watt-hours (ints); state of charge in percent 0..100.
- Times are Unix seconds from the clock passed in (the demo's conducted
  clock or the system clock), never read by the driver on its own.
- A value the device does not report is None, never 0 or NaN.
- Every call that talks to a device is async and either succeeds or
  raises a `DeviceError` subclass naming the device and what failed; a
  failed command leaves the device as it was (the last accepted setpoint
  stays in force until its own expiry, see below).

Safety: a battery setpoint and a charger limit both carry an expiry
(`until`). If the coordinator stops commanding (crash, lost link), the
device falls back to its own behaviour (self-consumption for a battery,
the charger's default limit for an EV) at that time rather than holding
a stale command forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence, runtime_checkable


class DeviceError(Exception):
    """Something went wrong talking to or commanding a device. `device`:
    the configured name (or charge point id)."""

    def __init__(self, device: str, detail: str) -> None:
        self.device = device
        self.detail = detail
        super().__init__(f"{device}: {detail}")


class DeviceUnavailable(DeviceError):
    """The device did not answer in time, the link is down or the
    charge point is not connected. Nothing was changed on the device."""


class SetpointError(DeviceError, ValueError):
    """A command outside what the device can do right now (beyond
    max_charge_w / max_discharge_w, NaN, an EV limit below 0). Raised
    before anything is sent: nothing was changed."""


class DeviceRejected(DeviceError):
    """The device answered but refused the command (a charge point's
    SetChargingProfile "Rejected", a Modbus exception on a write)."""


class DeviceUnsupported(DeviceError):
    """The device lacks what the driver needs (no SunSpec storage model,
    a register "not implemented")."""


# -- batteries -----------------------------------------------------------------


@dataclass(frozen=True)
class BatteryState:
    """One reading of a battery.

    `max_charge_w` / `max_discharge_w` are what the battery accepts *now*
    (both >= 0; they shrink near full / empty, with temperature, or when
    the device is in a fault state: then both are 0). A command must lie
    in [-max_discharge_w, +max_charge_w].
    """

    soc_pct: float  # 0..100
    power_w: float  # + charging, - discharging (measured, not commanded)
    max_charge_w: float  # >= 0
    max_discharge_w: float  # >= 0
    capacity_wh: int  # usable capacity (nameplate x state of health where known)
    t: float  # Unix seconds, from the clock passed to the driver
    setpoint_w: float | None = None  # the command in force, None: device's own mode
    min_soc_pct: float = 0.0  # reserve the device keeps (backup), below it no discharge
    max_soc_pct: float = 100.0
    soh_pct: float | None = None  # state of health
    status: str = "ok"  # "ok" | "standby" | "fault" | free text from the device

    @property
    def energy_wh(self) -> int:
        """Stored energy now."""
        return int(self.capacity_wh * self.soc_pct / 100.0 + 0.5)


# A setpoint this much beyond a limit still passes: limits are read from
# scaled registers, and a plan computed from them must not bounce off the
# last watt.
LIMIT_TOLERANCE_W = 0.5


def check_setpoint(device: str, setpoint_w: float, max_charge_w: float, max_discharge_w: float) -> None:
    """SetpointError unless setpoint_w is a number in [-max_discharge_w,
    max_charge_w] (what every Battery.command checks before sending)."""
    if isinstance(setpoint_w, bool) or not isinstance(setpoint_w, (int, float)) or math.isnan(setpoint_w):
        raise SetpointError(device, f"setpoint {setpoint_w!r}: expected a number of watts")
    if setpoint_w > max_charge_w + LIMIT_TOLERANCE_W:
        raise SetpointError(device, f"setpoint {setpoint_w:.0f} W: the battery accepts at most "
                            f"{max_charge_w:.0f} W of charge now")
    if setpoint_w < -max_discharge_w - LIMIT_TOLERANCE_W:
        raise SetpointError(device, f"setpoint {setpoint_w:.0f} W: the battery delivers at most "
                            f"{max_discharge_w:.0f} W of discharge now")


@runtime_checkable
class Battery(Protocol):
    """A home battery the plan commands."""

    name: str

    async def state(self) -> BatteryState:
        """Read the battery now. Raises DeviceUnavailable (timeout, link
        down) or DeviceUnsupported (the device lacks a needed value)."""
        ...

    async def command(self, setpoint_w: float, until: float | None = None) -> float:
        """Charge (+) or discharge (-) at `setpoint_w` until `until`
        (Unix seconds; None: the driver's default hold time, see its
        docs). Returns the setpoint the device accepted (after the
        device's own rounding to its register resolution). 0 holds the
        battery idle. Raises SetpointError before sending anything when
        `setpoint_w` is NaN or outside [-max_discharge_w, max_charge_w]."""
        ...

    async def release(self) -> None:
        """Hand control back to the device's own mode (self-consumption)."""
        ...


# -- EV chargers ---------------------------------------------------------------

OcppVersion = Literal["1.6", "2.0.1"]


@dataclass(frozen=True)
class MeterValue:
    """One sample from a charge point (OCPP MeterValues, or the meter data
    inside a TransactionEvent / Start/StopTransaction)."""

    charger_id: str
    evse_id: int  # connector (1.6) or EVSE (2.0.1); 0 = the whole charge point
    t: float  # the sample's timestamp (Unix seconds) as the charger stamped it
    energy_wh: int | None  # Energy.Active.Import.Register, cumulative
    power_w: float | None  # Power.Active.Import
    soc_pct: float | None = None  # the car's SoC, where the charger reports it
    session_id: str | None = None  # transaction id


@dataclass(frozen=True)
class ChargingSession:
    """A charging session (OCPP transaction) as the central system saw it."""

    session_id: str  # 1.6: transactionId (we assign it); 2.0.1: the charger's transactionId
    charger_id: str
    evse_id: int
    id_token: str  # who started it (idTag / idToken)
    started_t: float
    meter_start_wh: int | None
    stopped_t: float | None = None  # None while active
    meter_stop_wh: int | None = None
    energy_wh: int = 0  # delivered so far (last meter register - start)
    power_w: float | None = None  # last reported
    limit_w: float | None = None  # the limit in force from set_limit, if any
    stop_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.stopped_t is None


@dataclass(frozen=True)
class LimitResult:
    """What a charge point said to SetChargingProfile."""

    charger_id: str
    evse_id: int
    limit_w: float
    until: float | None
    accepted: bool
    status: str  # the charger's status string ("Accepted", "Rejected", ...)


@runtime_checkable
class EvCharger(Protocol):
    """One connected charge point."""

    charger_id: str
    version: OcppVersion

    @property
    def connected(self) -> bool: ...

    def sessions(self, active_only: bool = False) -> Sequence[ChargingSession]:
        """Sessions seen since the central system started (oldest first)."""
        ...

    def meter_values(self, since: float | None = None) -> Sequence[MeterValue]:
        """Samples received (bounded buffer, oldest first), those stamped
        after `since` if given."""
        ...

    async def set_limit(self, limit_w: float, until: float | None = None, evse_id: int = 0) -> LimitResult:
        """Cap charging at `limit_w` (>= 0; 0 pauses) until `until` (Unix
        seconds; None: until replaced or cleared) on `evse_id` (0: the
        whole charge point). Raises SetpointError for a negative/NaN
        limit, DeviceUnavailable if the charger is not connected or does
        not answer in time, DeviceRejected if it refuses."""
        ...

    async def clear_limit(self, evse_id: int = 0) -> None:
        """Remove our limit (ClearChargingProfile): the charger's default applies."""
        ...


SessionCallback = Callable[[ChargingSession], Any]  # may return an awaitable
MeterValueCallback = Callable[[MeterValue], Any]


@runtime_checkable
class ChargerFleet(Protocol):
    """The OCPP central system as the planner sees it: the charge points
    connected now, and callbacks for sessions and meter values as they
    arrive (e.g. to store them for settlement). A callback may be a plain
    or a coroutine function; an exception in one is logged and never
    reaches the charge point."""

    def chargers(self) -> Mapping[str, EvCharger]:
        """Charge points that have connected (by id), connected or not now."""
        ...

    def subscribe(self, on_session: SessionCallback | None = None,
                  on_meter_value: MeterValueCallback | None = None) -> None: ...
