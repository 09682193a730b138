"""Sixty days of trading on 7-day channels, on a clock moved by hand: one
buyer pays two sellers what each 6-hour settlement says it owes, through
expiries, rollovers (by time and by capacity), restarts of the buyer and
of a seller, and one seller offline across a lock time (the buyer refunds
that channel, and pays what the refund took back through the next one
when the seller returns). At the end every channel is closed or refunded
and every seller holds on the ledger exactly what the settlements said.

The nodes, stores, wallets, lifecycles and the buyer's TradingService are
the real ones; the channel messages go straight to the other node's
handler instead of over CoAP (tests/trading/test_rollover.py runs the
same rollover over CoAP)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.channel import ChannelPolicy, PayeeChannel, PayerChannel, State
from microgrid.coordinator.channels.lifecycle import ChannelLifecycle, LifecycleSettings
from microgrid.coordinator.channels.messages import Message
from microgrid.coordinator.channels.protocol import ChannelNode
from microgrid.coordinator.channels.transport import ChannelClient
from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.market.settlement import P2P, IntervalSettlement, PaymentInstruction
from microgrid.coordinator.overlay.directory import Directory
from microgrid.coordinator.overlay.memory import MemoryNetwork, MemoryOverlay
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.coordinator.trading.service import TradingService, TradingSettings

from ..channels.conftest import FixedClock, make_node

DAY = 86_400
STEP = 6 * 3600  # one settlement and one lifecycle look every 6 hours
LOCK_S = 7 * DAY
ZONE = "z"
POLICY = ChannelPolicy(min_lock_seconds=3_600, close_margin=DAY)  # several 6-hour looks inside the margin


class Wire:
    """Coordinators by URI; an offline one does not answer."""

    def __init__(self) -> None:
        self.nodes: dict[str, ChannelNode] = {}
        self.offline: set[str] = set()

    def client(self, node: ChannelNode) -> ChannelClient:
        wire = self

        class InProcess(ChannelClient):
            async def send(self, uri: str, msg: Message) -> bytes:
                if uri in wire.offline or uri not in wire.nodes:
                    raise ConnectionError(f"{uri} does not answer")
                return wire.nodes[uri].handle(msg.wire)

        return InProcess(node, None)  # type: ignore[arg-type]


def settlement(start: int, *payments: tuple[str, str, int, int]) -> IntervalSettlement:
    return IntervalSettlement(ZONE, start, STEP, 100, 0, 0, [],
                              [PaymentInstruction(payer, payee, sats, wh, P2P, ZONE, start)
                               for payer, payee, sats, wh in payments], b"")


def test_sixty_days_of_channels_lose_no_satoshi(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.ERROR)
    asyncio.run(_sixty_days(tmp_path))


async def _sixty_days(tmp_path: Path) -> None:
    clock = FixedClock()
    try:  # every transaction checked by a second implementation too (bsv-sdk), where installed
        from ..channels.independent import CheckedLedger
        ledger: LocalLedger = CheckedLedger(clock=clock)  # in memory: fewer fsyncs
    except ImportError:
        ledger = LocalLedger(clock=clock)
    wire = Wire()
    net = MemoryNetwork(clock.now)
    settings = TradingSettings(channel_capacity_sat=60_000, channel_lock_s=LOCK_S, renew_before_s=DAY,
                               reserve_sat=1_000, increment_wh=10)
    life = LifecycleSettings(every_s=STEP, full_below_sat=1_000)

    def node(name: str, funds: int = 0) -> ChannelNode:
        n = make_node(tmp_path, name, ledger, clock, funds=funds, uri=f"coap://{name}", policy=POLICY)
        wire.nodes[n.uri] = n
        return n

    async def buyer_service(a: ChannelNode) -> TradingService:
        overlay = MemoryOverlay(a.identity, net)
        await overlay.start()
        svc = TradingService(key=a.identity, overlay=overlay, market=MarketSettings(enabled=True, zone=ZONE),
                             clock=clock, store=ReadingStore(open_database(tmp_path / "a.db")), device_ids=lambda: [],
                             node=a, context=None, own_uri=a.uri, settings=settings)  # type: ignore[arg-type]
        svc.client = wire.client(a)
        return svc

    a = node("a", funds=5_000_000)
    sellers = {"b": node("b"), "c": node("c")}
    directories = []
    for s in sellers.values():
        o = MemoryOverlay(s.identity, net)
        await o.start()
        directories.append(Directory(o, {"coap": s.uri, "zone": ZONE}, ttl_s=2 * STEP, republish_s=STEP))
    buyer = await buyer_service(a)
    lifecycles = {n: ChannelLifecycle(x, wire.client(x).exchange, life) for n, x in [("a", a), *sellers.items()]}

    owed = {"b": 0, "c": 0}
    paid_in_step: dict[str, list[int]] = {"b": [], "c": []}
    offline_from, offline_to = 20 * DAY, 31 * DAY  # c misses a whole lock time
    start_t = int(clock.t)
    steps = 60 * DAY // STEP
    for i in range(steps):
        t = start_t + i * STEP
        clock.t = t
        ledger.mine()
        c_offline = offline_from <= t - start_t < offline_to
        wire.offline = {"coap://c"} if c_offline else set()
        if i == 40 * DAY // STEP:  # the buyer restarts: its books come back from disk
            a.store.close()
            a = node("a")
            buyer = await buyer_service(a)
            lifecycles["a"] = ChannelLifecycle(a, wire.client(a).exchange, life)
        if i == 45 * DAY // STEP:  # seller b restarts
            sellers["b"].store.close()
            sellers["b"] = node("b")
            lifecycles["b"] = ChannelLifecycle(sellers["b"], wire.client(sellers["b"]).exchange, life)
        for d in directories:
            await d.publish()
        # This interval's settlement: b is owed 900-1,400 sat, c 300-700.
        dues = {"b": 900 + (i * 37) % 500, "c": 300 + (i * 53) % 400}
        for name, sats in dues.items():
            owed[name] += sats
        s = settlement(t, *[(a.public_key.hex(), sellers[n].public_key.hex(), sats, 40) for n, sats in dues.items()])
        before = {n: sum(ch.received for ch in payees(sellers[n])) for n in sellers}
        await buyer.paying.settle(t, buyer.record_dues(s))
        for n in sellers:
            paid_in_step[n].append(sum(ch.received for ch in payees(sellers[n])) - before[n])
        for n, lc in lifecycles.items():
            if not (n == "c" and c_offline):
                await lc.tick()
        await asyncio.gather(*buyer._resumed, return_exceptions=True)

    # Wind down: no more trade; the clock runs on past every lock time with
    # everyone ticking, so every channel ends closed or refunded.
    wire.offline = set()
    for _ in range(9 * DAY // STEP):
        clock.t += STEP
        ledger.mine()
        for lc in lifecycles.values():
            await lc.tick()

    # b was paid in every single interval: no stall at any rollover.
    assert all(p > 0 for p in paid_in_step["b"]), paid_in_step["b"]
    # c got nothing while offline, and everything owed once back.
    offline_steps = [k for k in range(steps) if offline_from <= k * STEP < offline_to]
    assert all(paid_in_step["c"][k] == 0 for k in offline_steps)
    assert paid_in_step["c"][offline_steps[-1] + 1] > 1_000  # the arrears, at once

    channels = [e.channel for e in a.channels.values()]
    assert all(isinstance(ch, PayerChannel) for ch in channels)
    states = [ch.state for ch in channels]
    assert set(states) <= {State.CLOSED, State.REFUNDED}, states
    assert states.count(State.REFUNDED) >= 1  # c's channel across its lock time
    assert len(channels) >= 2 * 60 // 7  # rollovers, to both sellers
    for name, s in sellers.items():
        # What the ledger paid the seller on its channels' closes: exactly
        # what it was owed, the refunded channel's part paid again later.
        on_ledger = 0
        for cid, e in a.channels.items():
            ch = e.channel
            assert isinstance(ch, PayerChannel)
            if e.peer != s.public_key or ch.state != State.CLOSED:
                continue
            tx = ledger.transaction(ch.closing_txid)
            assert tx is not None and ledger.confirmations(ch.closing_txid) > 0
            on_ledger += sum(o.value for o in tx.outputs if bytes(o.script_pubkey) == ch.terms.payee_script)
        assert on_ledger == owed[name], (name, on_ledger, owed[name])
        assert s.wallet.balance() == owed[name]
    if hasattr(ledger, "checked"):  # fundings, closes, refunds: each one valid in bsv-sdk as well
        from bitcoinx import Tx
        written = sum(not Tx.from_bytes(bytes(r[0])).is_coinbase() for r in ledger.db.execute("SELECT raw FROM txs"))
        assert ledger.checked == written >= 2 * len(channels)
        # Nothing stuck: the buyer's coins are back too (less fees and payments).
    assert a.wallet.balance() + sum(owed.values()) <= 5_000_000
    assert a.wallet.balance() + sum(owed.values()) > 5_000_000 - 200 * len(channels)


def payees(node: ChannelNode) -> list[PayeeChannel]:
    return [e.channel for e in node.channels.values() if isinstance(e.channel, PayeeChannel)]
