"""The read-only API: meters and latest readings in JSON or CBOR as asked,
listed in /.well-known/core, with clear errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiocoap
import cbor2
from aiocoap.numbers.codes import Code

from .test_ingest import PUB, make, post, served, with_token


def get(client: aiocoap.Context, uri: str, accept: int | None = None) -> aiocoap.Message:
    req = with_token(aiocoap.Message(code=Code.GET, uri=uri))
    if accept is not None:
        req.opt.accept = accept
    return client.request(req).response


def test_meters_and_latest_reading_in_json_and_cbor(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(tmp_path) as (coord, client, uri):
            assert (await post(client, uri, make(1))).code == Code.CREATED
            assert (await post(client, uri, make(2))).code == Code.CREATED
            r = await asyncio.wait_for(get(client, uri + "/api/meters"), 10)
            assert r.code == Code.CONTENT and r.opt.content_format == 50
            meters = json.loads(r.payload)
            assert meters[0]["name"] == "m1" and meters[0]["latest"]["seq"] == 2
            assert (await post(client, uri, make(3, t=0))).code == Code.CREATED  # dated back: held, flagged
            meters = json.loads((await asyncio.wait_for(get(client, uri + "/api/meters"), 10)).payload)
            assert meters[0]["clock"] == {"stepped_back": 1, "into_settled": 0, "flagged_stepped": 0}
            device = meters[0]["device_id"]
            c = await asyncio.wait_for(get(client, uri + f"/api/meters/latest?id={device}", accept=60), 10)
            assert c.opt.content_format == 60 and cbor2.loads(c.payload)["latest"]["import_wh"] == 103
            bad = await asyncio.wait_for(get(client, uri + "/api/meters", accept=41), 10)
            assert bad.code == Code.NOT_ACCEPTABLE
            missing = await asyncio.wait_for(get(client, uri + "/api/meters/latest?id=0000000000000000"), 10)
            assert missing.code == Code.NOT_FOUND and b"no meter" in missing.payload
            noid = await asyncio.wait_for(get(client, uri + "/api/meters/latest"), 10)
            assert noid.code == Code.BAD_REQUEST
            empty = await asyncio.wait_for(get(client, uri + "/api/market"), 10)
            assert json.loads(empty.payload) == []

    asyncio.run(go())


def test_api_is_discoverable_in_well_known_core(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(tmp_path) as (coord, client, uri):
            r = await asyncio.wait_for(get(client, uri + "/.well-known/core"), 10)
            links = r.payload.decode()
            for path, rt in (("/api/meters", "microgrid.meters"), ("/api/market", "microgrid.market"),
                             ("/api/channels", "microgrid.channels")):
                assert f"<{path}>" in links and f'rt="{rt}"' in links
            assert 'ct="50 60"' in links

    asyncio.run(go())
