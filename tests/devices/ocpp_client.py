"""Charge points for the tests: the `ocpp` library's own ChargePoint side
(1.6J and 2.0.1) over a real websocket to the central system on
127.0.0.1. They record the profiles they receive and answer as told."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (EC P-256), PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coordinator.test")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "ocpp.crt", directory / "ocpp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


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
async def station(port: int, cid: str, version: str = "1.6", password: str = PASSWORD, path: str = "/ocpp",
                  tls: ssl.SSLContext | None = None) -> AsyncIterator[Any]:
    """A connected charge point running its receive loop (wss:// with `tls`)."""
    sub = "ocpp1.6" if version == "1.6" else "ocpp2.0.1"
    scheme = "wss" if tls is not None else "ws"
    async with connect(f"{scheme}://127.0.0.1:{port}{path}/{cid}", subprotocols=[sub],  # type: ignore[list-item]
                       additional_headers=basic(cid, password), open_timeout=5, ssl=tls) as ws:
        cp: Any = Station16(cid, ws) if version == "1.6" else Station201(cid, ws)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
