"""Live totals between counterparties over real CoAP on loopback
(coordinator/trading/live.py): a coordinator serves its newest signed live
record per interval; a counterparty fetches and checks it, and refuses one
signed by another key, for another interval or zone, or malformed."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiocoap
import aiocoap.resource as resource
import pytest
from aiocoap.numbers.codes import Code
from bitcoinx import PrivateKey

from microgrid.coordinator.ingest.guard import is_open
from microgrid.coordinator.overlay import MemoryNetwork, MemoryOverlay
from microgrid.coordinator.trading.live import (
    PATH, LiveFetcher, LiveRecords, LiveResource, Unreachable, fetch_live, live_uri)
from microgrid.processes import free_udp_port

START = (int(time.time()) // 900) * 900
KEY = f"mg/live/feeder-1/{START}"


def signer(seed: int) -> MemoryOverlay:
    return MemoryOverlay(PrivateKey(bytes(31) + bytes([seed])), MemoryNetwork())


def body(export_wh: int, import_wh: int) -> bytes:
    return json.dumps({"export_wh": export_wh, "import_wh": import_wh}).encode()


async def serve(live: LiveRecords) -> tuple[Any, str]:
    port = free_udp_port()
    site = resource.Site()
    site.add_resource(list(PATH), LiveResource(live.get))
    server = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    return server, f"coap://127.0.0.1:{port}/channel"


def test_a_counterparty_fetches_and_checks_the_newest_live_record() -> None:
    async def go() -> None:
        seller, other = signer(1), signer(2)
        live = LiveRecords(keep=2)
        server, contact = await serve(live)
        client = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            assert live_uri(contact, START) == f"coap://{contact.split('/')[2]}/live?start={START}"
            assert await fetch_live(client, contact, START, KEY, seller.public_key, time.time()) is None  # none yet
            live.put(START, seller.sign(KEY, body(400, 0), 3600))
            live.put(START, seller.sign(KEY, body(450, 0), 3600))  # newer: replaces
            assert await fetch_live(client, contact, START, KEY, seller.public_key, time.time()) == (450, 0)
            # Served, but not what was asked for: another key's, another
            # interval's name, a malformed body: each refused.
            live.put(START, other.sign(KEY, body(9999, 0), 3600))
            assert await fetch_live(client, contact, START, KEY, seller.public_key, time.time()) is None
            live.put(START, seller.sign(f"mg/live/feeder-1/{START - 900}", body(1, 0), 3600))
            assert await fetch_live(client, contact, START, KEY, seller.public_key, time.time()) is None
            live.put(START, seller.sign(KEY, b'{"export_wh": -5, "import_wh": 0}', 3600))
            assert await fetch_live(client, contact, START, KEY, seller.public_key, time.time()) is None
            live.put(START, seller.sign(KEY, b"not json", 3600))
            assert await fetch_live(client, contact, START, KEY, seller.public_key, time.time()) is None
            # Only the newest intervals are kept.
            for k in range(1, 4):
                live.put(START + 900 * k, seller.sign(KEY, body(k, 0), 3600))
            assert live.get(START) is None and live.get(START + 2700) is not None
            # A bad query is refused with a reason.
            bad = aiocoap.Message(code=Code.GET, uri=contact.replace("/channel", "/live?start=yesterday"))
            answer = await asyncio.wait_for(client.request(bad).response, 5)
            assert answer.code == Code.BAD_REQUEST and b"start" in answer.payload
        finally:
            await client.shutdown()
            await server.shutdown()
    asyncio.run(go())


def test_an_unanswering_coordinator_is_looked_up_again_and_payments_wait() -> None:
    async def go() -> None:
        seller = signer(3)
        live = LiveRecords()
        live.put(START, seller.sign(KEY, body(120, 0), 3600))
        server, contact = await serve(live)
        client = await aiocoap.Context.create_client_context(transports=["udp6"])
        dead = f"coap://127.0.0.1:{free_udp_port()}/channel"
        where = [dead]
        lookups: list[str] = []

        async def lookup(public_hex: str) -> str | None:
            lookups.append(public_hex)
            return where[0]
        fetcher = LiveFetcher(client, lookup, time.time, timeout_s=1.0)
        try:
            with pytest.raises(Unreachable):
                await fetch_live(client, dead, START, KEY, seller.public_key, time.time(), timeout_s=1.0)
            assert await fetcher.fetch_all([seller.public_key], START, KEY) == {}
            assert fetcher.counts["unreachable"] == 1 and seller.public_key not in fetcher.uris
            where[0] = contact  # it moved: its directory record says where
            assert await fetcher.fetch_all([seller.public_key], START, KEY) == {seller.public_key: (120, 0)}
            assert await fetcher.fetch_all([seller.public_key], START, KEY) == {seller.public_key: (120, 0)}
            assert len(lookups) == 2  # looked up again after it stopped answering, then remembered
            assert fetcher.counts["fetched"] == 2
            # A coordinator with no directory record is not looked up at
            # every poll (each lookup reads the overlay), only now and then.
            stranger, t = signer(4).public_key, [1_750_000_000.0]
            quiet = LiveFetcher(client, lambda hex_: asyncio.sleep(0, result=None), lambda: t[0])
            asked = []
            orig = quiet.lookup_uri

            async def counted(public_hex: str) -> str | None:
                asked.append(public_hex)
                return await orig(public_hex)
            quiet.lookup_uri = counted
            for _ in range(5):
                assert await quiet.fetch_all([stranger], START, KEY) == {}
                t[0] += 60
            assert len(asked) == 1 and quiet.counts["unknown"] == 5
            t[0] += 300
            assert await quiet.fetch_all([stranger], START, KEY) == {} and len(asked) == 2
        finally:
            await client.shutdown()
            await server.shutdown()
    asyncio.run(go())


def test_the_appliance_serves_live_totals_without_credentials_and_nothing_else_there() -> None:
    assert is_open(PATH, "GET")
    assert not is_open(PATH, "POST") and not is_open(PATH, "PUT")
