"""Read-only CoAP resources for other people's applications.

    GET /api/meters              registered meters with their latest reading
    GET /api/meters/latest?id=X  one meter's latest reading
    GET /api/market              the last settled market intervals
    GET /api/channels            payment channels and their balances

Each answers JSON (content-format 50, the default) or CBOR (60) as the
request's Accept option asks; anything else gets 4.06. All are listed in
/.well-known/core with rt="microgrid.*" and ct="50 60" (RFC 6690).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import aiocoap
import aiocoap.resource as resource
import cbor2
from aiocoap.numbers.codes import Code

JSON = 50
CBOR = 60


def encode(body: Any, request: aiocoap.Message) -> aiocoap.Message:
    accept = request.opt.accept
    want = JSON if accept is None else int(accept)
    if want == JSON:
        return aiocoap.Message(code=Code.CONTENT, payload=json.dumps(body, default=str).encode(), content_format=JSON)
    if want == CBOR:
        return aiocoap.Message(code=Code.CONTENT, payload=cbor2.dumps(body), content_format=CBOR)
    return aiocoap.Message(code=Code.NOT_ACCEPTABLE,
                           payload=f"accept {want}: this resource offers 50 (JSON) or 60 (CBOR)".encode())


class ReadOnly(resource.Resource):
    """A GET-only resource whose body comes from `produce(query)`."""

    def __init__(self, produce: Callable[[dict[str, str]], Any], rt: str) -> None:
        super().__init__()
        self.produce = produce
        self.rt = rt

    def get_link_description(self) -> dict[str, str]:
        return {"rt": self.rt, "ct": f"{JSON} {CBOR}"}

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        query = dict(q.split("=", 1) if "=" in q else (q, "") for q in request.opt.uri_query)
        try:
            body = self.produce(query)
        except LookupError as e:
            return aiocoap.Message(code=Code.NOT_FOUND, payload=str(e).strip("'\"").encode()[:200])
        except ValueError as e:
            return aiocoap.Message(code=Code.BAD_REQUEST, payload=str(e).encode()[:200])
        return encode(body, request)


def _reading_view(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = {k: row[k] for k in ("seq", "time", "import_wh", "export_wh", "power_w", "voltage_v", "source")}
    if row.get("extra"):
        out["extra"] = json.loads(row["extra"])
    return out


def mount(site: resource.Site, coordinator: Any) -> None:
    """Add the API resources for `coordinator` (store, console_* views)."""
    store = coordinator.store

    def meters(query: dict[str, str]) -> Any:
        # `clock`: readings held because dated back, and time steps the meter
        # flagged (store/readings.py, "When a reading counts").
        return [{"device_id": d.device_id, "name": d.name, "public_key": d.public_key.hex(),
                 "latest": _reading_view(store.last_reading(d.device_id)),
                 "clock": store.time_anomalies(d.device_id)} for d in store.devices()]

    def latest(query: dict[str, str]) -> Any:
        device = query.get("id", "")
        if not device:
            raise ValueError("give the meter as ?id=<device id>")
        if store.device(device) is None:
            raise LookupError(f"no meter {device}")
        return {"device_id": device, "latest": _reading_view(store.last_reading(device))}

    def market(query: dict[str, str]) -> Any:
        trading = getattr(coordinator, "trading", None)
        if trading is None:
            return []
        from ..market.settlement import report, unsettled_report

        settings = trading.market_settings
        out = {s: report(v) for s, v in trading.stats.settled.items()}
        out.update({s: unsettled_report(settings.zone, s, settings.interval_s, why)
                    for s, why in trading.stats.unsettled.items()})
        return [out[s] for s in sorted(out)[-8:]]

    def channels(query: dict[str, str]) -> Any:
        view = getattr(coordinator, "console_channels", None)
        return view() if view is not None else []

    site.add_resource(["api", "meters"], ReadOnly(meters, "microgrid.meters"))
    site.add_resource(["api", "meters", "latest"], ReadOnly(latest, "microgrid.reading"))
    site.add_resource(["api", "market"], ReadOnly(market, "microgrid.market"))
    site.add_resource(["api", "channels"], ReadOnly(channels, "microgrid.channels"))
