"""CoAP between coordinators' channel nodes (aiocoap).

Server: `ChannelResource` answers POST /channel (Content-Format 60,
application/cbor) with `ChannelNode.handle_async` (its chain look-ups off
the loop). Client: `ChannelClient` runs
the exchanges of a `ChannelNode` as payer (open, pay, close) and as payee
(telling the payer it closed). CoAP's confirmable messages handle
retransmission; a timed-out update is resent by `pay` before a new one is
signed, and the payee answers a duplicate as already held.
"""

from __future__ import annotations

import asyncio

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers.codes import Code

from .messages import Message
from .protocol import ChannelNode, ProtocolError

CBOR = 60
PATH = ("channel",)


class ChannelResource(resource.Resource):
    """POST /channel: one signed channel message; the answer is signed too
    (errors included, as an `error` message with a 4.00 code)."""

    def __init__(self, node: ChannelNode) -> None:
        super().__init__()
        self.node = node

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        reply = await self.node.handle_async(request.payload)
        return aiocoap.Message(code=Code.CHANGED, payload=reply, content_format=CBOR)


def site(node: ChannelNode, site: resource.Site | None = None) -> resource.Site:
    """Add the channel resource to `site` (or a new one)."""
    root = site or resource.Site()
    root.add_resource(PATH, ChannelResource(node))
    return root


async def serve(node: ChannelNode, host: str = "127.0.0.1", port: int = 0) -> aiocoap.Context:
    """A CoAP server context for `node` on host:port (port 0 is not
    supported by aiocoap's simple server; pass a free port)."""
    return await aiocoap.Context.create_server_context(site(node), bind=(host, port))


def channel_uri(host: str, port: int) -> str:
    return f"coap://{host}:{port}/channel"


class ChannelClient:
    """Runs a node's outgoing exchanges over a CoAP client context."""

    def __init__(self, node: ChannelNode, context: aiocoap.Context, timeout: float = 10.0) -> None:
        self.node = node
        self.context = context
        self.timeout = timeout

    async def send(self, uri: str, msg: Message) -> bytes:
        request = aiocoap.Message(code=Code.POST, uri=uri, payload=msg.wire, content_format=CBOR)
        response = await asyncio.wait_for(self.context.request(request).response, self.timeout)
        if not response.code.is_successful():
            raise ProtocolError("transport", f"{uri} answered {response.code}: {response.payload[:200]!r}")
        return bytes(response.payload)

    async def exchange(self, uri: str, msg: Message | None) -> None:
        """Send `msg` and follow the node's next requests until done."""
        while msg is not None:
            msg = await self.node.on_reply_async(msg, await self.send(uri, msg))

    async def open_channel(self, uri: str, capacity: int, lock_seconds: int, peer: bytes = b"") -> bytes:
        """Open and fund a channel paying the coordinator at `uri`; returns its id."""
        msg = self.node.open_request(uri, capacity, lock_seconds, peer)
        try:
            await self.exchange(uri, msg)
        except BaseException:
            # Stopped before the funding left this wallet: forget it (its
            # coins back, no row left behind). An open stopped later (the
            # refund signed) is finished by the lifecycle.
            self.node.abandon(msg.channel_id)
            raise
        return msg.channel_id

    async def pay(self, channel_id: bytes, amount: int) -> int:
        """Send an update adding `amount` sat (after resending any pending
        one); returns the cumulative amount acknowledged."""
        uri = self.node.channels[channel_id].peer_uri
        await self.exchange(uri, self.node.pending_request(channel_id))
        await self.exchange(uri, self.node.pay_request(channel_id, amount))
        return self.node.payer(channel_id).acked_amount

    async def resend_pending(self, channel_id: bytes) -> None:
        await self.exchange(self.node.channels[channel_id].peer_uri, self.node.pending_request(channel_id))

    async def close(self, channel_id: bytes) -> None:
        """As payer: ask the payee to close; the answer carries the closing tx."""
        await self.exchange(self.node.channels[channel_id].peer_uri, self.node.close_request(channel_id))

    async def close_due(self) -> list[bytes]:
        """As payee: close every channel within its close margin (call it
        periodically); returns the channels closed."""
        done = []
        for cid in self.node.channels_to_close():
            await self.close_as_payee(cid)
            done.append(cid)
        return done

    async def close_as_payee(self, channel_id: bytes) -> None:
        """As payee: close and tell the payer (if it gave a URI)."""
        notice = self.node.close(channel_id)
        uri = self.node.channels[channel_id].peer_uri
        if uri:
            await self.exchange(uri, notice)
