"""Charge points for the tests: the `ocpp` library's own ChargePoint side
(1.6J and 2.0.1) over a real websocket to the central system on
127.0.0.1. They record the profiles they receive and answer as told."""

from __future__ import annotations

import asyncio
import base64
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call_result as res16
from ocpp.v16.enums import Action as A16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call_result as res201
from ocpp.v201.enums import Action as A201
from websockets.asyncio.client import ClientConnection, connect

PASSWORD = "correct-horse-battery-9"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Station16(Cp16):
    def __init__(self, cid: str, ws: ClientConnection) -> None:
        super().__init__(cid, ws, response_timeout=5)
        self.profiles: list[dict[str, Any]] = []
        self.cleared: list[dict[str, Any]] = []
        self.answer = "Accepted"
        self.delay_s = 0.0

    @on(A16.set_charging_profile)
    async def on_set(self, connector_id: int, cs_charging_profiles: dict[str, Any], **kw: Any) -> Any:
        await asyncio.sleep(self.delay_s)
        self.profiles.append({"connector_id": connector_id, **cs_charging_profiles})
        return res16.SetChargingProfile(status=self.answer)

    @on(A16.clear_charging_profile)
    async def on_clear(self, **kw: Any) -> Any:
        self.cleared.append(kw)
        return res16.ClearChargingProfile(status="Accepted")


class Station201(Cp201):
    def __init__(self, cid: str, ws: ClientConnection) -> None:
        super().__init__(cid, ws, response_timeout=5)
        self.profiles: list[dict[str, Any]] = []
        self.cleared: list[dict[str, Any]] = []
        self.answer = "Accepted"
        self.delay_s = 0.0

    @on(A201.set_charging_profile)
    async def on_set(self, evse_id: int, charging_profile: dict[str, Any], **kw: Any) -> Any:
        await asyncio.sleep(self.delay_s)
        self.profiles.append({"evse_id": evse_id, **charging_profile})
        return res201.SetChargingProfile(status=self.answer)

    @on(A201.clear_charging_profile)
    async def on_clear(self, **kw: Any) -> Any:
        self.cleared.append(kw)
        return res201.ClearChargingProfile(status="Accepted")


@asynccontextmanager
async def station(port: int, cid: str, version: str = "1.6", password: str = PASSWORD,
                  path: str = "/ocpp") -> AsyncIterator[Any]:
    """A connected charge point running its receive loop."""
    sub = "ocpp1.6" if version == "1.6" else "ocpp2.0.1"
    async with connect(f"ws://127.0.0.1:{port}{path}/{cid}", subprotocols=[sub],  # type: ignore[list-item]
                       additional_headers=basic(cid, password), open_timeout=5) as ws:
        cp: Any = Station16(cid, ws) if version == "1.6" else Station201(cid, ws)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
