"""A charger's meter values in the readings store, counted once.

An EV charger behind the house meter is a sub-meter: what the car draws
is already in the house meter's import, so the charger's samples are
stored (the household sees the car's energy, the history keeps it) but
settlement and the planner's load history leave them out. A charger on its
own grid connection (a separate supply point) is a meter of the household
like any other: settled.

Per charger, `[ocpp.chargers.<id>] metering = "submeter"` (the default:
never counted twice) or `"connection"`. Each EVSE of a charger has its own
energy register, so each is its own stored device: `ocpp-<charge point
id>-evse<n>`. A charger no longer configured counts as a sub-meter.
Samples without the energy register (power only) are not stored: the
settlement walks energy registers.

The setting is read when settlement asks, so a charger switched from
"connection" to "submeter" stops counting for intervals settled after the
change; its stored samples stay.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Protocol

from .ocpp_settings import OcppSettings
from .registers import DeviceMeasurement

SUBMETER = "submeter"
CONNECTION = "connection"
PREFIX = "ocpp-"
_DEVICE = re.compile(r"^ocpp-(.+)-evse(\d+)$")


class MeasurementStore(Protocol):
    def insert_measurement(self, device_id: str, name: str, t: float, import_wh: int, export_wh: int,
                           power_w: float | None, voltage_v: float | None, extra: dict[str, Any],
                           source: str) -> int: ...


def device_id(charger_id: str, evse_id: int) -> str:
    return f"{PREFIX}{charger_id}-evse{evse_id}"


def charger_of(device: str) -> str | None:
    """The charge point id of a stored charger device, None for any other."""
    m = _DEVICE.match(device)
    return m.group(1) if m else None


class ChargerMetering:
    def __init__(self, store: MeasurementStore, ocpp: OcppSettings) -> None:
        self.store = store
        self.metering = {c.charger_id: c.metering for c in ocpp.charger_settings()}

    def kind(self, charger_id: str) -> str:
        return self.metering.get(charger_id, SUBMETER)

    def record(self, m: DeviceMeasurement) -> None:
        """A charger's sample (ocpp_central.as_measurement) stored under its
        EVSE's device id; the source says whether it is a sub-meter."""
        if m.import_wh is None:
            return
        evse = int(m.extra.get("evse_id", 0))
        kind = self.kind(m.device)
        source = m.source if kind == CONNECTION else f"{SUBMETER}:{m.source}"
        extra = {k: float(v) for k, v in m.extra.items()}
        extra["submeter"] = 1.0 if kind == SUBMETER else 0.0
        self.store.insert_measurement(device_id(m.device, evse), m.device, m.t, int(m.import_wh), 0, m.power_w,
                                      m.voltage_v, extra, source)

    def is_submeter(self, device: str) -> bool:
        cid = charger_of(device)
        return cid is not None and self.kind(cid) == SUBMETER

    def settled(self, device_ids: Iterable[str]) -> list[str]:
        """The devices whose energy is the household's at its connection."""
        return [d for d in device_ids if not self.is_submeter(d)]
