"""The household's controllable devices, started and stopped together:
the configured batteries and, when enabled, the OCPP central system. The
app makes one `DeviceService` and hands `batteries` and `fleet` to the
planner; charger meter samples go to `on_measurement` in the wired
meters' form (DeviceMeasurement, source "ocpp:<charge point id>") so they
are stored the way Modbus meters' are.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, Callable

from .batteries import make_batteries
from .battery_settings import BatterySettings
from .interface import Battery, ChargerFleet, MeterValue
from .modbus import ModbusLink
from .modbus_settings import ModbusSettings
from .ocpp_central import OcppCentral, as_measurement
from .ocpp_settings import OcppSettings
from .registers import DeviceMeasurement

log = logging.getLogger("microgrid.devices")


class DeviceService:
    def __init__(self, battery: BatterySettings, modbus: ModbusSettings, ocpp: OcppSettings,
                 clock: Callable[[], float], secrets_dir: Path | None = None,
                 on_measurement: Callable[[DeviceMeasurement], Any] | None = None) -> None:
        self.battery_settings = battery
        self.modbus_settings = modbus
        self.ocpp_settings = ocpp
        self.clock = clock
        self.secrets_dir = secrets_dir
        self.on_measurement = on_measurement
        self.batteries: dict[str, Battery] = {}
        self.central: OcppCentral | None = None
        self._links: list[ModbusLink] = []

    @property
    def fleet(self) -> ChargerFleet | None:
        return self.central

    async def start(self) -> "DeviceService":
        """Build the batteries (no I/O yet: each talks to its device on the
        first state()) and start the central system. Raises the settings'
        errors (a missing password file, a certificate that does not load)."""
        self.batteries, self._links = make_batteries(self.battery_settings, self.modbus_settings, self.clock)
        if self.ocpp_settings.enabled:
            central = OcppCentral(self.ocpp_settings, clock=self.clock, secrets_dir=self.secrets_dir)
            if self.on_measurement is not None:
                central.subscribe(on_meter_value=self._forward)
            self.central = await central.start()
        log.info("devices: %d batter%s%s", len(self.batteries), "y" if len(self.batteries) == 1 else "ies",
                 f", OCPP on port {self.central.port}" if self.central else "")
        return self

    async def _forward(self, mv: MeterValue) -> None:
        assert self.on_measurement is not None and self.central is not None
        link = self.central.chargers().get(mv.charger_id)
        r = self.on_measurement(as_measurement(mv, link.version if link else ""))
        if inspect.isawaitable(r):
            await r

    async def stop(self) -> None:
        if self.central is not None:
            await self.central.stop()
            self.central = None
        for link in self._links:
            link.close()
        self._links = []
