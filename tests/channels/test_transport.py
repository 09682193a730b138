"""Two coordinators' channel nodes over real CoAP/UDP on 127.0.0.1."""

from __future__ import annotations

import asyncio

import aiocoap
import pytest

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.channel import AmountError, State
from microgrid.coordinator.channels.protocol import ProtocolError
from microgrid.coordinator.channels.transport import ChannelClient, channel_uri, serve

from ..conftest import free_udp_port
from .conftest import FixedClock, make_node


def test_open_stream_close_over_coap(tmp_path, ledger: LocalLedger) -> None:
    clock = FixedClock()
    ledger.clock = clock
    pa, pb = free_udp_port(), free_udp_port()
    a = make_node(tmp_path, "a", ledger, clock, funds=1_000_000, uri=channel_uri("127.0.0.1", pa))
    b = make_node(tmp_path, "b", ledger, clock, uri=channel_uri("127.0.0.1", pb))

    async def go() -> None:
        sa = await serve(a, "127.0.0.1", pa)
        sb = await serve(b, "127.0.0.1", pb)
        client_a = ChannelClient(a, await aiocoap.Context.create_client_context())
        client_b = ChannelClient(b, await aiocoap.Context.create_client_context())
        try:
            cid = await client_a.open_channel(b.uri, 200_000, 7_200, b.public_key)
            for i in range(100):
                clock.t += 1
                assert await client_a.pay(cid, 50) == 50 * (i + 1)
            with pytest.raises(AmountError, match="capacity"):
                await client_a.pay(cid, 10_000_000)
            assert b.payee(cid).received == 5_000
            # near the lock time the payee closes and tells the payer over CoAP
            assert await client_b.close_due() == []
            clock.t = b.payee(cid).terms.refund_locktime - 600
            assert await client_b.close_due() == [cid]
            assert a.payer(cid).state == State.CLOSED
            assert ledger.transaction(a.payer(cid).closing_txid) is not None
        finally:
            for ctx in (client_a.context, client_b.context, sa, sb):
                await ctx.shutdown()

    asyncio.run(go())
