"""A slow chain backend does not stall CoAP: the lifecycle's chain calls to
a network backend (one that `blocking` says waits on the network) run in
the chain thread while the event loop keeps answering channel updates."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiocoap

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.lifecycle import ChannelLifecycle, LifecycleSettings
from microgrid.coordinator.channels.protocol import txid_hex_of
from microgrid.coordinator.channels.transport import ChannelClient, channel_uri, serve

from ..conftest import free_udp_port
from .conftest import FixedClock, make_node

DELAY_S = 2.0


class SlowNode:
    """A remote node answering each look-up after DELAY_S (as a loaded
    node or ARC far away would); the ledger behind it is the truth."""

    blocking = True

    def __init__(self, ledger: LocalLedger) -> None:
        self.ledger = ledger
        self.delay = 0.0
        self.threads: set[str] = set()

    def _wait(self) -> None:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)

    def confirmations(self, txid: str) -> int:
        self._wait()
        return self.ledger.confirmations(txid)

    def get_output(self, outpoint: Any) -> Any:
        self._wait()
        return self.ledger.get_output(outpoint)

    def broadcast(self, tx: Any) -> str:
        self._wait()
        return self.ledger.broadcast(tx)

    def __getattr__(self, name: str) -> Any:  # tip, ..: at once
        return getattr(self.ledger, name)


def test_coap_keeps_answering_while_the_lifecycle_waits_on_a_slow_chain(tmp_path, ledger: LocalLedger) -> None:
    clock = FixedClock()
    ledger.clock = clock
    slow = SlowNode(ledger)
    pa, pb = free_udp_port(), free_udp_port()
    a = make_node(tmp_path, "a", ledger, clock, funds=1_000_000, uri=channel_uri("127.0.0.1", pa))
    b = make_node(tmp_path, "b", ledger, clock, uri=channel_uri("127.0.0.1", pb))
    b.chain = slow

    async def go() -> None:
        sa, sb = await serve(a, "127.0.0.1", pa), await serve(b, "127.0.0.1", pb)
        client_a = ChannelClient(a, await aiocoap.Context.create_client_context())
        client_b = ChannelClient(b, await aiocoap.Context.create_client_context())
        try:
            cid = await client_a.open_channel(b.uri, 200_000, 7_200, b.public_key)
            await client_a.pay(cid, 50)
            slow.delay, slow.threads = DELAY_S, set()
            seller = ChannelLifecycle(b, client_b.exchange, LifecycleSettings(every_s=300, confirmations=1))
            started = time.monotonic()
            tick = asyncio.ensure_future(seller.tick())  # watches the unconfirmed funding: one slow look-up
            await asyncio.sleep(0.2)
            assert not tick.done()
            paid_in = []
            for _ in range(3):  # updates over CoAP, answered while the tick waits on the chain
                t0 = time.monotonic()
                await client_a.pay(cid, 50)
                paid_in.append(time.monotonic() - t0)
            assert not tick.done(), f"the tick finished before the updates: {paid_in}"
            report = await tick
            assert time.monotonic() - started >= DELAY_S and not report.failed and not report.funding_lost
            assert b.payee(cid).received == 200 and max(paid_in) < DELAY_S / 2
            assert slow.threads and all(n.startswith("chain") for n in slow.threads)
        finally:
            for ctx in (client_a.context, client_b.context, sa, sb):
                await ctx.shutdown()

    asyncio.run(go())


def test_a_request_waiting_on_a_slow_chain_holds_up_only_itself(tmp_path, ledger: LocalLedger) -> None:
    """A second channel's `funded` makes the payee look the funding output
    up (2 s); updates on the first channel are answered meanwhile."""
    clock = FixedClock()
    ledger.clock = clock
    slow = SlowNode(ledger)
    pa, pb = free_udp_port(), free_udp_port()
    a = make_node(tmp_path, "a", ledger, clock, funds=1_000_000, uri=channel_uri("127.0.0.1", pa))
    b = make_node(tmp_path, "b", ledger, clock, uri=channel_uri("127.0.0.1", pb))
    b.chain = slow

    async def go() -> None:
        sa, sb = await serve(a, "127.0.0.1", pa), await serve(b, "127.0.0.1", pb)
        client_a = ChannelClient(a, await aiocoap.Context.create_client_context())
        try:
            first = await client_a.open_channel(b.uri, 200_000, 7_200, b.public_key)
            slow.delay, slow.threads = DELAY_S, set()
            second = asyncio.ensure_future(client_a.open_channel(b.uri, 100_000, 7_200, b.public_key))
            while not slow.threads:  # the payee is looking the second funding up
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            for _ in range(3):
                await client_a.pay(first, 50)
            paid_in = time.monotonic() - t0
            assert not second.done() and paid_in < DELAY_S / 2
            cid = await second
            assert b.payee(cid).state.value == "open" and b.payee(first).received == 150
            assert all(n.startswith("chain") for n in slow.threads)
        finally:
            for ctx in (client_a.context, sa, sb):
                await ctx.shutdown()

    asyncio.run(go())


def test_a_close_waiting_on_a_slow_broadcast_does_not_stall_other_channels(tmp_path, ledger: LocalLedger) -> None:
    """The seller's lifecycle closes one channel (a 2 s broadcast, after
    2 s look-ups) while the buyer keeps paying on another."""
    clock = FixedClock()
    ledger.clock = clock
    slow = SlowNode(ledger)
    pa, pb = free_udp_port(), free_udp_port()
    a = make_node(tmp_path, "a", ledger, clock, funds=1_000_000, uri=channel_uri("127.0.0.1", pa))
    b = make_node(tmp_path, "b", ledger, clock, uri=channel_uri("127.0.0.1", pb))
    b.chain = slow

    async def go() -> None:
        sa, sb = await serve(a, "127.0.0.1", pa), await serve(b, "127.0.0.1", pb)
        client_a = ChannelClient(a, await aiocoap.Context.create_client_context())
        client_b = ChannelClient(b, await aiocoap.Context.create_client_context())
        try:
            full = await client_a.open_channel(b.uri, 20_000, 7_200, b.public_key)
            other = await client_a.open_channel(b.uri, 200_000, 7_200, b.public_key)
            await client_a.pay(full, 19_500)  # less than full_below_sat left: due to close
            await client_a.pay(other, 50)
            ledger.mine()
            watch = ChannelLifecycle(b, client_b.exchange, LifecycleSettings(every_s=300, full_below_sat=0))
            await watch.tick()  # both fundings confirmed (no more look-ups for them), nothing due yet
            seller = ChannelLifecycle(b, client_b.exchange, LifecycleSettings(every_s=300, full_below_sat=1_000))
            slow.delay, slow.threads = DELAY_S, set()
            tick = asyncio.ensure_future(seller.tick())
            while not slow.threads:  # the close is being broadcast
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            for _ in range(3):
                await client_a.pay(other, 50)
            paid_in = time.monotonic() - t0
            assert not tick.done() and paid_in < DELAY_S / 2
            report = await tick
            assert report.closed == [full] and b.payee(other).received == 200
            assert ledger.confirmations(b.payee(full).closing_tx.hex_hash()) == 0
            assert all(n.startswith("chain") for n in slow.threads)
        finally:
            for ctx in (client_a.context, client_b.context, sa, sb):
                await ctx.shutdown()

    asyncio.run(go())


def test_a_close_the_buyer_asks_for_does_not_stall_other_channels(tmp_path, ledger: LocalLedger) -> None:
    """The buyer asks the seller to close one channel (the seller's
    broadcast takes 2 s) and keeps paying on another meanwhile."""
    clock = FixedClock()
    ledger.clock = clock
    slow = SlowNode(ledger)
    pa, pb = free_udp_port(), free_udp_port()
    a = make_node(tmp_path, "a", ledger, clock, funds=1_000_000, uri=channel_uri("127.0.0.1", pa))
    b = make_node(tmp_path, "b", ledger, clock, uri=channel_uri("127.0.0.1", pb))
    b.chain = slow

    async def go() -> None:
        sa, sb = await serve(a, "127.0.0.1", pa), await serve(b, "127.0.0.1", pb)
        client_a = ChannelClient(a, await aiocoap.Context.create_client_context(), timeout=30)
        try:
            old = await client_a.open_channel(b.uri, 20_000, 7_200, b.public_key)
            new = await client_a.open_channel(b.uri, 200_000, 7_200, b.public_key)
            await client_a.pay(old, 5_000)
            slow.delay, slow.threads = DELAY_S, set()
            closing = asyncio.ensure_future(client_a.close(old))
            while not slow.threads:
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            for _ in range(3):
                await client_a.pay(new, 50)
            paid_in = time.monotonic() - t0
            assert not closing.done() and paid_in < DELAY_S / 2
            await closing
            assert a.payer(old).state.value == "closed" and a.payer(old).closed_amount == 5_000
            assert b.payee(new).received == 150 and all(n.startswith("chain") for n in slow.threads)
            # Asked again: answered from the close made, the chain looked at off the loop.
            slow.threads = set()
            await client_a.exchange(b.uri, a.close_request(old))
            assert slow.threads and all(n.startswith("chain") for n in slow.threads)
        finally:
            for ctx in (client_a.context, sa, sb):
                await ctx.shutdown()

    asyncio.run(go())


def test_a_buyer_broadcasting_a_funding_on_a_slow_chain_keeps_paying(tmp_path, ledger: LocalLedger) -> None:
    """The buyer's own chain is slow: opening its next channel (the funding
    broadcast, 2 s) does not hold up its payments on the current one."""
    clock = FixedClock()
    ledger.clock = clock
    slow = SlowNode(ledger)
    pa, pb = free_udp_port(), free_udp_port()
    a = make_node(tmp_path, "a", ledger, clock, funds=1_000_000, uri=channel_uri("127.0.0.1", pa))
    b = make_node(tmp_path, "b", ledger, clock, uri=channel_uri("127.0.0.1", pb))
    a.chain = slow

    async def go() -> None:
        sa, sb = await serve(a, "127.0.0.1", pa), await serve(b, "127.0.0.1", pb)
        client_a = ChannelClient(a, await aiocoap.Context.create_client_context())
        try:
            current = await client_a.open_channel(b.uri, 200_000, 7_200, b.public_key)
            slow.delay, slow.threads = DELAY_S, set()
            opening = asyncio.ensure_future(client_a.open_channel(b.uri, 100_000, 7_200, b.public_key))
            while not slow.threads:  # the buyer is broadcasting the new funding
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            for _ in range(3):
                await client_a.pay(current, 50)
            paid_in = time.monotonic() - t0
            assert not opening.done() and paid_in < DELAY_S / 2
            nxt = await opening
            assert b.payee(nxt).state.value == "open" and ledger.confirmations(txid_hex_of(b.payee(nxt).funding)) == 0
            assert b.payee(current).received == 150 and all(n.startswith("chain") for n in slow.threads)
        finally:
            for ctx in (client_a.context, sa, sb):
                await ctx.shutdown()

    asyncio.run(go())
