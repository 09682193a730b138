"""A seller that comes back on another address after a restart keeps
being paid on the same channel: the buyer, finding it unreachable where
the channel was opened, looks its directory record up again and pays
there (issue 17). Nothing is paid twice; a seller that is simply down,
with no new address, is an error the caller retries later."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import aiocoap
import pytest

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.transport import ChannelClient, channel_uri, serve
from microgrid.coordinator.trading.payer import ChannelPayer
from microgrid.coordinator.trading.rollover import RolloverPolicy

from ..channels.conftest import FixedClock, ledger, make_node  # noqa: F401 - the ledger fixture
from ..conftest import free_udp_port


def test_a_seller_back_on_another_address_is_found_again_and_paid_on_the_same_channel(
        tmp_path: Path, ledger: LocalLedger) -> None:
    clock = FixedClock()
    ledger.clock = clock
    pa, pb, pb2 = free_udp_port(), free_udp_port(), free_udp_port()
    a = make_node(tmp_path, "a", ledger, clock, funds=1_000_000, uri=channel_uri("127.0.0.1", pa))
    b = make_node(tmp_path, "b", ledger, clock, uri=channel_uri("127.0.0.1", pb))
    directory = {b.public_key.hex(): channel_uri("127.0.0.1", pb)}
    lookups: list[str] = []

    async def lookup(payee: str) -> str | None:
        lookups.append(payee)
        return directory.get(payee)

    async def go() -> None:
        sa, sb = await serve(a, "127.0.0.1", pa), await serve(b, "127.0.0.1", pb)
        ctx = await aiocoap.Context.create_client_context()
        stats = SimpleNamespace(channels_opened=0, rollover_s=[], refused_rollovers=0)
        payer = ChannelPayer(a, ChannelClient(a, ctx, timeout=2.0), clock, RolloverPolicy(renew_before_s=0),
                             100_000, 7_200, lookup, stats, lambda coro: asyncio.ensure_future(coro))
        seller = b.public_key.hex()
        servers = [sa, sb]
        try:
            assert await payer.pay_one(seller, 500) == 500
            cid = payer.channel_to[seller]
            # The seller stops: down, and its record still names the old address.
            await sb.shutdown()
            servers.remove(sb)
            with pytest.raises((asyncio.TimeoutError, OSError, aiocoap.error.NetworkError)):
                await payer.pay_one(seller, 300)
            # A pending update went out at most once: the buyer signed 800 at most.
            assert a.payer(cid).paid <= 800
            # Back on another port, and announced there.
            directory[seller] = channel_uri("127.0.0.1", pb2)
            servers.append(await serve(b, "127.0.0.1", pb2))
            assert await payer.pay_one(seller, 200) in (700, 1_000)
            assert a.channels[cid].peer_uri == directory[seller]  # kept for the next payments
            assert await payer.pay_one(seller, 100) == a.payer(cid).paid == b.payee(cid).received
            assert stats.channels_opened == 1 and payer.channel_to[seller] == cid
            # The new address is on disk too: a restart of the buyer pays there.
            assert [r[0] for r in a.store.conn.execute("SELECT peer_uri FROM channels")] == [directory[seller]]
        finally:
            for c in (ctx, *servers):
                await c.shutdown()

    asyncio.run(go())
