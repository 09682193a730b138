"""The coordinator starts its batteries when [battery] names any, reads
and commands them through the device interface, and stops them with
itself; with no [battery] units and OCPP off it starts no device service."""

from __future__ import annotations

import asyncio
from pathlib import Path

from microgrid.coordinator.app import Coordinator
from microgrid.coordinator.config import Config

from ..conftest import free_udp_port


def make_config(tmp_path: Path, units: dict[str, dict[str, object]]) -> Config:
    config = Config()
    config.coap.port = free_udp_port()
    config.store.path = str(tmp_path / "c.db")
    config.battery.units = units
    return config.validate()


def test_a_configured_battery_is_started_read_and_commanded_through_the_app(tmp_path: Path) -> None:
    async def run() -> None:
        c = Coordinator(make_config(tmp_path, {"garage": {"kind": "simulated"}}))
        await c.start()
        try:
            assert c.devices is not None
            battery = c.devices.batteries["garage"]
            before = await battery.state()
            assert 0 <= before.soc_pct <= 100
            await battery.command(min(1000, before.max_charge_w), until=c.clock.now() + 900)
            assert (await battery.state()).power_w > 0  # charging is positive
        finally:
            await c.stop()

    asyncio.run(run())


def test_without_batteries_or_chargers_no_device_service_starts(tmp_path: Path) -> None:
    async def run() -> None:
        c = Coordinator(make_config(tmp_path, {}))
        await c.start()
        try:
            assert c.devices is None
        finally:
            await c.stop()

    asyncio.run(run())
