"""Registering a meter's public key over CoAP: `POST /devices`, and looking
a registration up: `GET /devices?id=<device id>`.

The installer's laptop (`microgrid flash`) posts a CBOR map

    {"public_key": h'02..' (33 bytes, compressed SEC1),
     "name": "flat-3 meter" (optional, at most 64 characters),
     "token": "<installer token>"}

and gets 2.01 (registered now) or 2.04 (this key was already registered;
the first registration, its name included, is kept), each with a CBOR map
{"device_id", "name", "public_key", "registered_at"}. A missing or wrong
installer token gives 4.01 and registers nothing; a coordinator without a
token configured refuses every registration with 4.03 (the technician uses
`microgrid coordinator register-device` there). A body that is not such a
map gives 4.00.

Sent over plain CoAP the token travels in clear: it proves the request
comes from someone the operator gave the token to, on the neighbourhood's
network. Over OSCORE (coordinator/link/guard.py) the installer's security
context is the credential instead: no token, the request and the answer
encrypted, and the answer can carry the meter's own OSCORE context.

`DeviceRegistry` decides (bytes in, `Answer` out, no sockets); the
aiocoap resource below only moves bytes, as in resources.py.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Any

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers.codes import Code

from microgrid.shared import cbor, secp256k1

from ..store.database import StoreError
from ..store.readings import Device, ReadingStore

log = logging.getLogger("microgrid.ingest.devices")

CBOR_FORMAT = 60  # Content-Format application/cbor
MAX_BODY_BYTES = 512
MAX_NAME_CHARS = 64
FIELDS = ("public_key", "name", "token")


@dataclass(frozen=True)
class Answer:
    code: str  # "2.01", "4.01", ...
    diagnostic: str
    body: dict[str, Any] | None = None  # sent as CBOR when present

    @property
    def ok(self) -> bool:
        return self.code.startswith("2.")


def device_map(device: Device) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "name": device.name,
        "public_key": device.public_key,
        "registered_at": device.registered_at,
    }


class DeviceRegistry:
    """The decisions of /devices. `installer_token` empty: registration
    over CoAP is disabled."""

    def __init__(self, store: ReadingStore, installer_token: str) -> None:
        self.store = store
        self._token = installer_token.encode()
        self.counts = {"registered": 0, "known": 0, "unauthorized": 0, "malformed": 0}

    def _refuse(self, code: str, why: str) -> Answer:
        self.counts["unauthorized" if code in ("4.01", "4.03") else "malformed"] += 1
        log.warning("device registration refused %s: %s", code, why)
        return Answer(code, why)

    def _token_ok(self, offered: Any) -> bool:
        if not isinstance(offered, str):
            return False
        # Constant time: the comparison takes as long for a token that
        # shares a long prefix with the real one as for one that shares none.
        return hmac.compare_digest(offered.encode(), self._token)

    def register(self, body: bytes, authenticated: bool = False) -> Answer:
        """`authenticated`: the request came through an installer's OSCORE
        context (coordinator/link/guard.py), which stands for the token."""
        if len(body) > MAX_BODY_BYTES:
            return self._refuse("4.00", f"body of {len(body)} bytes: expected at most {MAX_BODY_BYTES}")
        try:
            request = cbor.loads(bytes(body))
        except ValueError as e:
            return self._refuse("4.00", f"body is not CBOR: {e}")
        if not isinstance(request, dict):
            return self._refuse("4.00", f"body is a CBOR {type(request).__name__}: expected a map with {', '.join(FIELDS)}")
        if authenticated:
            pass
        elif not self._token:
            return self._refuse("4.03", "registration over CoAP is disabled: the coordinator has no [ingest] installer_token")
        elif "token" not in request:
            return self._refuse("4.01", "installer token missing: expected \"token\" in the request")
        elif not self._token_ok(request["token"]):
            return self._refuse("4.01", "installer token does not match the coordinator's [ingest] installer_token")
        unknown = sorted(str(k) for k in request if k not in FIELDS)
        if unknown:
            return self._refuse("4.00", f"unknown field(s) {', '.join(unknown)}: expected {', '.join(FIELDS)}")
        public_key = request.get("public_key")
        if not isinstance(public_key, bytes) or len(public_key) != 33:
            shown = public_key.hex() if isinstance(public_key, bytes) else repr(public_key)
            return self._refuse("4.00", f"public_key={shown[:80]}: expected 33 bytes (compressed SEC1, 02/03 prefix)")
        try:
            secp256k1.decode_public_key(public_key)
        except ValueError as e:
            return self._refuse("4.00", f"public_key={public_key.hex()}: not a secp256k1 point: {e}")
        name = request.get("name", "")
        if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or any(ord(c) < 32 for c in name):
            return self._refuse("4.00", f"name={name!r:.80}: expected text of at most {MAX_NAME_CHARS} printable characters")
        try:
            device, created = self.store.register_device(public_key, name)
        except StoreError as e:
            if "collides" in str(e):
                return self._refuse("4.09", str(e))
            log.error("%s", e)
            return Answer("5.03", "storage unavailable, retry later")
        if created:
            self.counts["registered"] += 1
            log.info("registered device %s (%s)", device.device_id, device.name)
            return Answer("2.01", f"registered {device.device_id}", device_map(device))
        self.counts["known"] += 1
        log.info("device %s (%s) was already registered", device.device_id, device.name)
        return Answer("2.04", f"already registered {device.device_id}", device_map(device))

    def lookup(self, query: list[str]) -> Answer:
        """GET /devices?id=<device id>."""
        ids = [q[3:] for q in query if q.startswith("id=")]
        if len(ids) != 1 or len(ids[0]) != 16 or any(c not in "0123456789abcdef" for c in ids[0]):
            return Answer("4.00", f"query {'&'.join(query)!r:.80}: expected id=<16 lower-case hex digits>")
        device = self.store.device(ids[0])
        if device is None:
            return Answer("4.04", f"device {ids[0]} is not registered")
        return Answer("2.05", f"device {device.device_id}", device_map(device))


def _code(text: str) -> Code:
    cls, detail = text.split(".")
    return Code(int(cls) * 32 + int(detail))


def response(answer: Answer) -> aiocoap.Message:
    if answer.body is not None:
        return aiocoap.Message(code=_code(answer.code), payload=cbor.dumps(answer.body), content_format=CBOR_FORMAT)
    return aiocoap.Message(code=_code(answer.code), payload=answer.diagnostic.encode()[:200])


class DevicesResource(resource.Resource):
    """POST /devices registers a key; GET /devices?id=... shows one."""

    def __init__(self, registry: DeviceRegistry) -> None:
        super().__init__()
        self.registry = registry

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        cf = request.opt.content_format
        if cf is not None and int(cf) != CBOR_FORMAT:
            return response(Answer("4.15", f"content-format {int(cf)}: expected {CBOR_FORMAT} (application/cbor)"))
        return response(self.registry.register(request.payload))

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return response(self.registry.lookup(list(request.opt.uri_query)))


def devices_resource(store: ReadingStore, installer_token: str) -> DevicesResource:
    return DevicesResource(DeviceRegistry(store, installer_token))
