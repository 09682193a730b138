"""A buyer's payments never stop across a rollover: it opens the next
channel to a seller before the current one reaches its close margin or
fills, and moves on at once when the seller refuses more on a channel.
Real channel nodes over CoAP on 127.0.0.1, the seller found through the
overlay directory, both sides' channel lifecycles ticking, a clock moved
by hand over several channel lifetimes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiocoap

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.channel import PayerChannel, State
from microgrid.coordinator.channels.lifecycle import ChannelLifecycle, LifecycleSettings
from microgrid.coordinator.channels.transport import ChannelClient, channel_uri, serve
from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.overlay.memory import MemoryNetwork, MemoryOverlay
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.coordinator.trading.rollover import RolloverPolicy
from microgrid.coordinator.trading.service import TradingService, TradingSettings

from ..channels.conftest import FixedClock, ledger, make_node  # noqa: F401 - the ledger fixture
from ..conftest import free_udp_port

LOCK_S = 7_200  # the nodes' policy: 600 s close margin
STEP_S = 60
AMOUNT = 400


def test_payments_never_stop_across_rollovers(tmp_path: Path, ledger: LocalLedger) -> None:
    asyncio.run(_rollovers(tmp_path, ledger))


async def _rollovers(tmp_path: Path, ledger: LocalLedger) -> None:
    clock = FixedClock()
    ledger.clock = clock
    port_a, port_b = free_udp_port(), free_udp_port()
    a = make_node(tmp_path, "a", ledger, clock, funds=2_000_000, uri=channel_uri("127.0.0.1", port_a))
    b = make_node(tmp_path, "b", ledger, clock, uri=channel_uri("127.0.0.1", port_b))
    net = MemoryNetwork(clock.now)
    overlays = [MemoryOverlay(a.identity, net), MemoryOverlay(b.identity, net)]
    for o in overlays:
        await o.start()
    server_a, server_b = await serve(a, port=port_a), await serve(b, port=port_b)
    ctx = await aiocoap.Context.create_client_context()
    market = MarketSettings(enabled=True, zone="z")
    # Small channels, so capacity runs out too: 20,000 sat is 50 payments.
    settings = TradingSettings(channel_capacity_sat=20_000, channel_lock_s=LOCK_S, renew_before_s=900,
                               reserve_sat=1_000)
    buyer = TradingService(key=a.identity, overlay=overlays[0], market=market, clock=clock,
                           store=ReadingStore(open_database(tmp_path / "a.db")), device_ids=lambda: [], node=a,
                           context=ctx, own_uri=a.uri, settings=settings)
    seller = TradingService(key=b.identity, overlay=overlays[1], market=market, clock=clock,
                            store=ReadingStore(open_database(tmp_path / "b.db")), device_ids=lambda: [], node=b,
                            context=ctx, own_uri=b.uri, settings=settings)
    seller_life = ChannelLifecycle(b, ChannelClient(b, ctx).exchange, LifecycleSettings(full_below_sat=1_000))
    buyer_life = ChannelLifecycle(a, ChannelClient(a, ctx).exchange, LifecycleSettings())
    seller_hex = b.public_key.hex()
    try:
        await seller.publish_directory()
        received = []
        open_at_once = 0
        for step in range(5 * LOCK_S // STEP_S):  # five channel lifetimes
            await seller.publish_directory()  # as each market round does
            if step == 20:
                # The seller closes the channel in use behind the buyer's
                # back (its notice lost): its refusal of the next update
                # moves the buyer on within that same payment.
                b.close(buyer.channel_to[seller_hex])
            before = sum(b.payee(cid).received for cid in b.channels)
            await buyer.paying.send(seller_hex, [AMOUNT], "stream", 10, interval=0)
            got = sum(b.payee(cid).received for cid in b.channels) - before
            received.append(got)
            assert got == AMOUNT, (step, clock.t, [r for r in a.rows()])
            await asyncio.sleep(0)  # let a close request in flight run
            await seller_life.tick()
            await buyer_life.tick()
            open_at_once = max(open_at_once, len(a.open_channels("payer")))
            clock.t += STEP_S
        await asyncio.gather(*buyer._resumed, return_exceptions=True)
        await seller_life.tick()
        await buyer_life.tick()

        payers = {cid: e.channel for cid, e in a.channels.items()}
        assert all(isinstance(ch, PayerChannel) for ch in payers.values())
        assert buyer.stats.channels_opened == len(payers) >= 8  # by time and by capacity
        assert buyer.stats.payment_updates == len(received) and buyer.stats.errors == 0
        assert buyer.stats.refused_rollovers == 1  # the seller's early close was met without a gap
        assert open_at_once <= 2  # the next one is opened, the old one closes
        # Every channel but the current one is closed on the chain, and the
        # seller's closes hold everything it took. The update the seller
        # refused after closing behind the buyer's back stays signed (a
        # payee could keep it), so the buyer counts it until the chain
        # shows the close; then the chain's figure counts.
        current = buyer.channel_to[seller_hex]
        total = AMOUNT * len(received)
        refused = 0
        for cid, ch in payers.items():
            if cid == current:
                assert ch.state == State.OPEN
                continue
            assert ch.state == State.CLOSED, (cid.hex(), ch.state)
            assert ch.closed_amount == b.payee(cid).received
            assert ledger.spent_by(ch.funding) == ch.closing_txid
            refused += ch.paid - ch.closed_amount
        assert refused == AMOUNT
        assert sum(b.payee(cid).received for cid in payers) == total
        assert b.wallet.balance() == total - payers[current].paid
        assert buyer.accounts.signed == {seller_hex: total + AMOUNT}
        assert a.signed_by_peer("payer") == {seller_hex: total}  # what the next settlement's books start from
        # Rollover took no clock time here (the clock is moved by hand);
        # the bench measures it in real time.
        assert len(buyer.stats.rollover_s) == len(payers)
    finally:
        await ctx.shutdown()
        await server_a.shutdown()
        await server_b.shutdown()
        for o in overlays:
            await o.stop()


def test_rollover_policy_picks_the_oldest_usable_channel() -> None:
    from bitcoinx import PrivateKey

    from microgrid.coordinator.channels.channel import ChannelPolicy

    policy = ChannelPolicy(min_lock_seconds=3_600, close_margin=600)
    key = PrivateKey.from_random()

    def channel(locktime_in: int, capacity: int, now: int = 1_700_000_000) -> PayerChannel:
        ch = PayerChannel.propose(bytes(16), capacity, key, bytes(25), now, locktime_in, policy)
        ch.state = State.OPEN
        return ch

    rp = RolloverPolicy(renew_before_s=900, reserve_sat=1_000)
    old, new = channel(3_600, 20_000), channel(7_200, 40_000)
    now = 1_700_000_000
    chans = [(b"old", old), (b"new", new)]
    assert rp.pick(chans, now, 100) == b"old"
    # 1,500 s before the old one's margin: past its renew point.
    assert rp.pick(chans, now + 3_600 - 600 - 900, 100) == b"new"
    assert rp.to_retire(chans, now + 3_600 - 600 - 900, 100) == [b"old"]
    assert rp.pick(chans, now, 100, exclude={b"old"}) == b"new"
    # A payment that would leave less than the reserve goes elsewhere.
    assert rp.pick(chans, now, old.remaining - 999) == b"new"
    assert rp.pick(chans, now, old.remaining - 1_000) == b"old"
    new.state = State.CLOSED
    assert rp.pick(chans, now + 3_000, 100) is None and rp.to_retire(chans, now, 100) == []
