"""Charging profiles from a limit: the one SetChargingProfile / Clear
request per OCPP version that `EvCharger.set_limit` sends (pure: no I/O).

The profile is a TxDefaultProfile (it applies to the running transaction
and to the next ones on that connector/EVSE; on 0, to all of them), of
kind Absolute, starting a minute before now (CLOCK_SLACK_S), with one
period at the limit, its duration and validTo at `until`, so the charger drops it by itself when the plan
stops being renewed. One id and stack level for all of ours: a new limit
replaces the previous one (OCPP: same id -> replaced), and a profile the
installer set at another stack level stays untouched.
"""

from __future__ import annotations

import math

from ocpp.v16 import call as call16
from ocpp.v16 import datatypes as dt16
from ocpp.v16 import enums as en16
from ocpp.v201 import call as call201
from ocpp.v201 import datatypes as dt201
from ocpp.v201 import enums as en201

from .ocpp_sessions import iso

PROFILE_ID = 7001  # ours; anything else on the charger belongs to someone else
STACK_LEVEL = 5
# The schedule starts this long before now, so a charger whose clock runs
# behind ours (by up to this) applies the limit at once, not when its clock
# catches up; the duration is lengthened by as much, so it still ends at `until`.
CLOCK_SLACK_S = 60


def rate(limit_w: float, unit: str, voltage_v: float, phases: int) -> float:
    """The limit in the charger's unit, rounded down to 0.1 (never above
    what the plan allows)."""
    value = limit_w if unit == "W" else limit_w / (voltage_v * phases)
    return math.floor(value * 10 + 1e-9) / 10


def set_profile_16(connector_id: int, limit_w: float, now: float, until: float | None, unit: str, voltage_v: float,
                   phases: int) -> call16.SetChargingProfile:
    schedule = dt16.ChargingSchedule(
        charging_rate_unit=en16.ChargingRateUnitType.watts if unit == "W" else en16.ChargingRateUnitType.amps,
        charging_schedule_period=[dt16.ChargingSchedulePeriod(start_period=0, limit=rate(limit_w, unit, voltage_v, phases),
                                                              number_phases=phases if unit == "A" else None)],
        duration=_duration(now, until),
        start_schedule=iso(now - CLOCK_SLACK_S))
    profile = dt16.ChargingProfile(
        charging_profile_id=PROFILE_ID, stack_level=STACK_LEVEL,
        charging_profile_purpose=en16.ChargingProfilePurposeType.tx_default_profile,
        charging_profile_kind=en16.ChargingProfileKindType.absolute, charging_schedule=schedule,
        valid_to=None if until is None else iso(until))
    return call16.SetChargingProfile(connector_id=connector_id, cs_charging_profiles=profile)


def set_profile_201(evse_id: int, limit_w: float, now: float, until: float | None, unit: str, voltage_v: float,
                    phases: int) -> call201.SetChargingProfile:
    schedule = dt201.ChargingScheduleType(
        id=1,
        charging_rate_unit=en201.ChargingRateUnitEnumType.watts if unit == "W" else en201.ChargingRateUnitEnumType.amps,
        charging_schedule_period=[dt201.ChargingSchedulePeriodType(
            start_period=0, limit=rate(limit_w, unit, voltage_v, phases), number_phases=phases if unit == "A" else None)],
        start_schedule=iso(now - CLOCK_SLACK_S),
        duration=_duration(now, until))
    profile = dt201.ChargingProfileType(
        id=PROFILE_ID, stack_level=STACK_LEVEL,
        charging_profile_purpose=en201.ChargingProfilePurposeEnumType.tx_default_profile,
        charging_profile_kind=en201.ChargingProfileKindEnumType.absolute, charging_schedule=[schedule],
        valid_to=None if until is None else iso(until))
    return call201.SetChargingProfile(evse_id=evse_id, charging_profile=profile)


def _duration(now: float, until: float | None) -> int | None:
    return None if until is None else max(1, int(math.ceil(until - now))) + CLOCK_SLACK_S


def clear_profile_16(connector_id: int) -> call16.ClearChargingProfile:
    return call16.ClearChargingProfile(id=PROFILE_ID, connector_id=connector_id)


def clear_profile_201() -> call201.ClearChargingProfile:
    return call201.ClearChargingProfile(charging_profile_id=PROFILE_ID)
