"""Only the configured transports are open (ingest/transports.py), on
127.0.0.1: by default UDP alone (nothing on TCP port or port + 3000); a
WebSocket transport refuses a browser's handshake from an Origin not
configured; a TCP transport keeps at most max_tcp_connections."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import AsyncIterator

import aiocoap
import pytest
import websockets
from aiocoap.numbers.codes import Code

from microgrid.coordinator.app import Coordinator
from microgrid.coordinator.config import Config

from ..conftest import free_udp_port
from .test_ingest import PUB, make, post


def free_port_pair() -> int:
    """A port free for UDP and TCP whose + 3000 is free for TCP too."""
    for _ in range(50):
        port = free_udp_port()
        if port + 3000 > 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 3000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair on 127.0.0.1")


@contextlib.asynccontextmanager
async def coordinator(tmp_path: Path, **coap: object) -> AsyncIterator[tuple[Coordinator, str]]:
    config = Config()
    config.coap.port = free_port_pair()
    config.store.path = str(tmp_path / "c.db")
    for k, v in coap.items():
        setattr(config.coap, k, v)
    config.validate()
    c = Coordinator(config)
    c.store.register_device(PUB, "m1")
    await c.start()
    try:
        yield c, f"coap://127.0.0.1:{config.coap.port}"
    finally:
        await c.stop()


def tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_by_default_only_udp_is_open(tmp_path: Path) -> None:
    async def go() -> None:
        async with coordinator(tmp_path) as (c, uri):
            port = c.config.coap.port
            assert not tcp_open(port), "CoAP over TCP must not listen unless configured"
            assert not tcp_open(port + 3000), "CoAP over WebSocket must not listen unless configured"
            client = await aiocoap.Context.create_client_context()
            try:
                assert (await post(client, uri, make(1))).code == Code.CREATED
            finally:
                await client.shutdown()

    asyncio.run(go())


def test_websocket_refuses_a_browser_from_another_origin(tmp_path: Path) -> None:
    async def go() -> None:
        async with coordinator(tmp_path, transports=["udp", "ws"], ws_origins=["https://ha.example.lan"]) as (c, uri):
            url = f"ws://127.0.0.1:{c.config.coap.port + 3000}/.well-known/coap"
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                async with websockets.connect(url, origin="https://evil.example", subprotocols=["coap"]):
                    pass
            assert refused.value.response.status_code == 403
            async with websockets.connect(url, origin="https://ha.example.lan", subprotocols=["coap"]) as ws:
                assert ws.subprotocol == "coap"
            async with websockets.connect(url, subprotocols=["coap"]) as ws:  # not a browser: no Origin
                assert ws.subprotocol == "coap"
            assert not tcp_open(c.config.coap.port)  # ws alone does not open TCP

    asyncio.run(go())


def test_tcp_connections_are_capped_and_udp_readings_still_go_in(tmp_path: Path) -> None:
    async def go() -> None:
        async with coordinator(tmp_path, transports=["udp", "tcp"], max_tcp_connections=4) as (c, uri):
            port = c.config.coap.port
            loop = asyncio.get_running_loop()
            socks = []
            for _ in range(12):
                s = socket.socket()
                s.setblocking(False)
                await loop.sock_connect(s, ("127.0.0.1", port))
                socks.append(s)

            async def was_closed(s: socket.socket) -> bool:
                try:
                    return await asyncio.wait_for(loop.sock_recv(s, 64), 3) == b""
                except ConnectionResetError:
                    return True
                except asyncio.TimeoutError:
                    return False  # kept open: within the cap

            closed = sum(await asyncio.gather(*(was_closed(s) for s in socks)))
            for s in socks:
                s.close()
            assert closed == 8 and c.tcp_counts["tcp_refused"] == 8
            client = await aiocoap.Context.create_client_context()
            try:
                assert (await post(client, uri, make(1))).code == Code.CREATED
            finally:
                await client.shutdown()

    asyncio.run(go())


@pytest.mark.parametrize("coap,message", [
    ({"transports": ["tcp"]}, "with \"udp\""),
    ({"transports": ["udp", "dtls"]}, "distinct names from udp, tcp, ws"),
    ({"transports": ["udp", "udp"]}, "distinct"),
    ({"transports": "udp"}, "expected a list"),
    ({"ws_origins": ["*"]}, "web origins"),
    ({"max_tcp_connections": 0}, "max_tcp_connections=0"),
])
def test_transport_settings_are_validated(coap: dict[str, object], message: str) -> None:
    from microgrid.coordinator.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        from_dict({"coap": coap})
