"""Only the transports the configuration names are opened.

Left to itself, aiocoap's server context also listens on CoAP-over-TCP on
the same port and CoAP-over-WebSocket on port + 3000, so a web page in any
browser on the LAN could talk to the coordinator. `[coap] transports`
chooses among:

- "udp": CoAP over UDP on `[coap] host`:`port` (the default, alone; it
  also carries our own requests to peer coordinators);
- "tcp": CoAP over TCP (RFC 8323) on the same port, at most
  `[coap] max_tcp_connections` at a time (one more is closed at once);
- "ws": CoAP over WebSocket (RFC 8323) on port + 3000, path
  /.well-known/coap. A browser always sends `Origin`: a handshake whose
  Origin is not in `[coap] ws_origins` gets HTTP 403, so a web page
  cannot use the coordinator through its visitor's browser. Clients that
  are not browsers send no Origin and are let through (they still need
  credentials for the API).

This uses aiocoap's transport classes (pinned below 0.5) and one private
method of its Context, `_append_tokenmanaged_transport`.
"""

from __future__ import annotations

import http
import logging
from typing import Any, Iterable

import aiocoap

log = logging.getLogger("microgrid.ingest.transports")

KNOWN = ("udp", "tcp", "ws")
WS_PORT_OFFSET = 3000


def aiocoap_names(transports: Iterable[str]) -> list[str]:
    """aiocoap's transport names for ours, WebSocket excepted (opened by
    `open_websocket` with the Origin check)."""
    names: list[str] = []
    for t in transports:
        if t == "udp":
            names.append("udp6")
        elif t == "tcp":
            names += ["tcpserver", "tcpclient"]
    return names


class _CappedPool(set):  # type: ignore[type-arg]
    """TCPServer's set of connections, refusing members past `cap`: a
    connection over the cap is closed as soon as it is made."""

    def __init__(self, cap: int, counts: dict[str, int]) -> None:
        super().__init__()
        self.cap = cap
        self.counts = counts

    def add(self, connection: Any) -> None:
        if len(self) >= self.cap:
            self.counts["tcp_refused"] += 1
            log.warning("TCP connection over [coap] max_tcp_connections=%d: closed", self.cap)
            connection.connection_made = lambda transport: transport.abort()
            connection.data_received = lambda data: None
            connection.connection_lost = lambda exc: None
            connection.eof_received = lambda: None
            return
        super().add(connection)


def cap_tcp(context: aiocoap.Context, cap: int) -> dict[str, int]:
    """Bound the TCP server's connections (file descriptors) to `cap`."""
    from aiocoap.transports.tcp import TCPServer

    counts = {"tcp_refused": 0}
    for interface in context.request_interfaces:
        server = getattr(interface, "token_interface", None)
        if isinstance(server, TCPServer):
            pool = _CappedPool(cap, counts)
            pool.update(server._pool)
            server._pool = pool
    return counts


def _origin_checking_pool(origins: frozenset[str]) -> Any:
    from aiocoap.transports.ws import WSPool

    class OriginCheckingWSPool(WSPool):  # type: ignore[misc]
        async def _process_request(self, connection: Any, request: Any) -> Any:
            origin = request.headers.get("Origin")
            if origin is not None and origin not in origins:
                log.warning("WebSocket handshake from Origin %.80s refused (not in [coap] ws_origins)", origin)
                return connection.respond(http.HTTPStatus.FORBIDDEN, "origin not allowed\n")
            return await WSPool._process_request(connection, request)

    return OriginCheckingWSPool


async def open_websocket(context: aiocoap.Context, host: str, port: int, origins: Iterable[str]) -> None:
    """CoAP over WebSocket on port + 3000 with the Origin check."""
    pool = _origin_checking_pool(frozenset(origins))
    await context._append_tokenmanaged_transport(
        lambda tman: pool.create_transport(tman, context.log, context.loop,
                                           client_credentials=context.client_credentials,
                                           server_bind=(host, port)))
