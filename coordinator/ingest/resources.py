"""CoAP resources of the coordinator (aiocoap). They move bytes between
the network and the transport-free cores; no decisions are made here."""

from __future__ import annotations

import json
from typing import Any

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers.codes import Code

from .readings import Outcome, ReadingIngest

COSE_SIGN1 = 18  # Content-Format application/cose; cose-type="cose-sign1"

_CODES = {
    "2.01": Code.CREATED,
    "2.04": Code.CHANGED,
    "4.00": Code.BAD_REQUEST,
    "4.01": Code.UNAUTHORIZED,
    "4.03": Code.FORBIDDEN,
    "4.09": Code.CONFLICT,
    "4.13": Code.REQUEST_ENTITY_TOO_LARGE,
    "4.15": Code.UNSUPPORTED_CONTENT_FORMAT,
    "5.03": Code.SERVICE_UNAVAILABLE,
}


def response(outcome: Outcome) -> aiocoap.Message:
    return aiocoap.Message(code=_CODES[outcome.code], payload=outcome.diagnostic.encode()[:200])


class ReadingsResource(resource.Resource):
    """POST /readings: one signed reading (COSE_Sign1) per request."""

    def __init__(self, ingest: ReadingIngest) -> None:
        super().__init__()
        self.ingest = ingest

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        cf = request.opt.content_format
        if cf is not None and int(cf) != COSE_SIGN1:
            return response(Outcome("4.15", f"content-format {int(cf)}: expected {COSE_SIGN1} (COSE_Sign1)"))
        return response(self.ingest.accept(request.payload))


class HealthResource(resource.Resource):
    """GET /health: liveness for anyone ({"status": "ok"}); the counters as
    well for a request with credentials (`access`, see access.py)."""

    def __init__(self, status: Any, access: Any = None) -> None:
        super().__init__()
        self.status = status
        self.access = access

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        if self.access is not None and not self.access.decide(request).allowed:
            body: Any = {"status": "ok"}
        else:
            body = self.status()
        return aiocoap.Message(code=Code.CONTENT, payload=json.dumps(body).encode(), content_format=50)
