"""The coordinator's CoAP duplicate cache stays bounded at any request rate,
and still answers a retransmitted request from the cache."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiocoap
from aiocoap.numbers.codes import Code

from microgrid.coordinator.app import Coordinator
from microgrid.coordinator.config import Config
from microgrid.coordinator.ingest.dedup import BoundedRecentMessages
from microgrid.edge import coap as edge_coap
from microgrid.shared import reading, secp256k1

from ..conftest import free_udp_port

SECRET = bytes(range(1, 33))
PUB = secp256k1.public_key(SECRET)


def test_cache_expires_by_age_and_evicts_by_count() -> None:
    now = [0.0]
    cache = BoundedRecentMessages(max_entries=3, lifetime_s=10, clock=lambda: now[0])
    for i in range(5):
        cache.remember(("a", i))
    assert list(cache) == [("a", 2), ("a", 3), ("a", 4)]
    now[0] = 11.0
    cache.expire()
    assert len(cache) == 0
    assert cache.pop(("a", 99)) is None  # a late timer from aiocoap is harmless


def test_server_cache_is_bounded_and_retransmissions_get_the_cached_answer(tmp_path: Path) -> None:
    config = Config()
    config.coap.port = free_udp_port()
    config.store.path = str(tmp_path / "c.db")
    config.ingest.dedup_entries = 64

    async def go() -> None:
        coordinator = Coordinator(config)
        coordinator.store.register_device(PUB)
        await coordinator.start()
        client = await aiocoap.Context.create_client_context()
        try:
            uri = f"coap://127.0.0.1:{config.coap.port}/health"
            for _ in range(300):
                resp = await asyncio.wait_for(client.request(aiocoap.Message(code=Code.GET, uri=uri)).response, 10)
                assert resp.code == Code.CONTENT
            (cache,) = [c for c in coordinator.dedup_caches if len(c)]
            assert len(cache) <= 64 and cache.evicted > 0

            # A raw confirmable POST sent twice with the same message id: the
            # second is answered from the cache, and stored once.
            msg = reading.build(SECRET, PUB, 1, 1_700_000_000, 1, 0, 1, 230.0)
            datagram = edge_coap.encode(edge_coap.CON, edge_coap.POST, 4242, b"tok1",
                                        [(edge_coap.OPT_URI_PATH, b"readings"), (edge_coap.OPT_CONTENT_FORMAT, b"\x12")], msg)
            loop = asyncio.get_running_loop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(("127.0.0.1", config.coap.port))
            answers = []
            for _ in range(2):
                await loop.sock_sendall(sock, datagram)
                data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
                answers.append(edge_coap.decode(data))
            sock.close()
            assert answers[0] == answers[1]
            mtype, code, mid, token, payload = answers[0]
            assert (mtype, code, mid, token) == (edge_coap.ACK, 65, 4242, b"tok1")
            assert coordinator.store.count() == 1
        finally:
            await client.shutdown()
            await coordinator.stop()

    asyncio.run(go())
