"""A buyer whose channel funding vanished from the chain (dropped from
mempools) gets its stream going again within one payment: the seller
refuses the update (code "funding"), the buyer broadcasts the funding
again and resends that same update, the seller looks at the chain again
and takes it. No second channel, no payment twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import aiocoap

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.lifecycle import ChannelLifecycle, LifecycleSettings
from microgrid.coordinator.channels.protocol import txid_hex_of
from microgrid.coordinator.channels.transport import ChannelClient, channel_uri, serve
from microgrid.coordinator.trading.payer import ChannelPayer
from microgrid.coordinator.trading.rollover import RolloverPolicy

from ..channels.conftest import FixedClock, ledger, make_node  # noqa: F401 - the ledger fixture
from ..conftest import free_udp_port


def test_a_vanished_funding_is_put_back_and_the_same_update_resent(tmp_path: Path, ledger: LocalLedger) -> None:
    clock = FixedClock()
    ledger.clock = clock
    pa, pb = free_udp_port(), free_udp_port()
    a = make_node(tmp_path, "a", ledger, clock, funds=1_000_000, uri=channel_uri("127.0.0.1", pa))
    b = make_node(tmp_path, "b", ledger, clock, uri=channel_uri("127.0.0.1", pb))

    async def go() -> None:
        sa, sb = await serve(a, "127.0.0.1", pa), await serve(b, "127.0.0.1", pb)
        ctx = await aiocoap.Context.create_client_context()

        async def lookup(_: str) -> str:
            return b.uri

        stats = SimpleNamespace(channels_opened=0, rollover_s=[], refused_rollovers=0)
        payer = ChannelPayer(a, ChannelClient(a, ctx), clock, RolloverPolicy(renew_before_s=0), 100_000, 7_200,
                             lookup, stats, lambda coro: asyncio.ensure_future(coro))
        seller = ChannelLifecycle(b, ChannelClient(b, ctx).exchange, LifecycleSettings(confirmations=1))
        seller_hex = b.public_key.hex()
        try:
            assert await payer.pay_one(seller_hex, 500) == 500
            cid = payer.channel_to[seller_hex]
            funding = txid_hex_of(a.payer(cid).funding)
            ledger.evict(funding)
            assert (await seller.tick()).funding_lost == [cid]
            assert await payer.pay_one(seller_hex, 500) == 1_000
            assert ledger.confirmations(funding) == 0 and not b.payee(cid).funding_lost
            assert b.payee(cid).received == 1_000 and stats.channels_opened == 1 and stats.refused_rollovers == 0
            # Lost again: the same again.
            ledger.evict(funding)
            assert (await seller.tick()).funding_lost == [cid]
            assert await payer.pay_one(seller_hex, 250) == 1_250
            assert b.payee(cid).received == 1_250 and a.payer(cid).paid == 1_250
        finally:
            for c in (ctx, sa, sb):
                await c.shutdown()

    asyncio.run(go())
