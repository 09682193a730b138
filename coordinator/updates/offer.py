"""The offer to meters rides on the acknowledgement of their readings: a
2.01 carries " fw=VERSION" while a release is offered (service.offer_suffix),
so a meter that is not updating spends nothing on asking. The meter then
fetches fw/manifest and the image itself (edge/ota.py).
"""

from __future__ import annotations

from typing import Callable

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers.codes import Code

MAX_PAYLOAD = 200


class OfferingReadings(resource.Resource):
    """The readings resource, its 2.01s extended with the offer."""

    def __init__(self, inner: resource.Resource, suffix: Callable[[str | None], str]) -> None:
        super().__init__()
        self.inner = inner
        self.suffix = suffix

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        resp = await self.inner.render_post(request)  # type: ignore[attr-defined]
        if resp.code == Code.CREATED:
            extra = self.suffix(device_of(resp.payload)).encode()
            if extra and len(resp.payload) + len(extra) <= MAX_PAYLOAD:
                resp.payload = resp.payload + extra
        return resp


def device_of(payload: bytes) -> str | None:
    """The device id in "stored DEVICE/SEQ t=..." (ingest/readings.py)."""
    parts = payload.split(b" ")
    if len(parts) < 2 or parts[0] != b"stored":
        return None
    return parts[1].split(b"/")[0].decode("ascii", "replace")
