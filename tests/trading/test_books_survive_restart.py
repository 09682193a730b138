"""A coordinator's trading books survive a restart: what the settlements
say is owed (our database) and what has been signed (the channel store).
A restarted buyer neither pays a seller twice nor forgets what it paid
ahead or still owes; a restarted seller still knows who is behind and keeps
its export relay open on them. Real channel nodes, CoAP over 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import aiocoap
import pytest

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.protocol import ChannelNode
from microgrid.coordinator.channels.transport import channel_uri, serve, site as channel_site
from microgrid.coordinator.devices.gpio import Relay, SimulatedGpio
from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.market.settlement import P2P, IntervalSettlement, PaymentInstruction
from microgrid.coordinator.store.database import MIGRATIONS, open_database
from microgrid.coordinator.store.books import StoredBook
from microgrid.coordinator.store.dues import Due, DuesStore
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.coordinator.overlay.directory import Directory
from microgrid.coordinator.trading.live import PATH as LIVE_PATH, LiveRecords, LiveResource
from microgrid.coordinator.trading.service import TradingService, TradingSettings

from ..channels.conftest import FixedClock, ledger, make_node  # noqa: F401 - the ledger fixture
from ..conftest import free_udp_port

ZONE = "z"


def service(node: ChannelNode, db: Path, clock: FixedClock, context: aiocoap.Context | None,
            relay: Relay | None = None) -> TradingService:
    return TradingService(key=node.identity, overlay=SimpleNamespace(public_key=node.public_key),
                          market=MarketSettings(enabled=True, zone=ZONE), clock=clock,
                          store=ReadingStore(open_database(db)), device_ids=lambda: [], node=node,
                          context=context, own_uri="coap://127.0.0.1:1/channel",  # type: ignore[arg-type]
                          export_relay=relay,
                          # these tests' channels last 7,200 s: renew them within that
                          settings=TradingSettings(renew_before_s=900))


def settlement(start: int, *payments: tuple[str, str, int, int]) -> IntervalSettlement:
    return IntervalSettlement(ZONE, start, 900, 100, 0, 0, [],
                              [PaymentInstruction(payer, payee, sats, wh, P2P, ZONE, start)
                               for payer, payee, sats, wh in payments], b"")


async def settle(svc: TradingService, s: IntervalSettlement) -> list[Due]:
    dues = svc.record_dues(s)
    svc.expect_payments(s.interval_start, dues)
    await svc.paying.settle(s.interval_start, dues)
    return dues


def test_dues_are_recorded_once_and_summed_per_peer(tmp_path: Path) -> None:
    dues = DuesStore(open_database(tmp_path / "d.db"))
    first = dues.record(900, [Due("a", "b", 100, 10), Due("a", "b", 50, 5), Due("c", "a", 10, 1)])
    assert first == [Due("a", "b", 150, 15), Due("c", "a", 10, 1)]
    assert dues.record(900, [Due("a", "b", 999, 999)]) == []  # the interval counts once
    dues.record(1800, [Due("a", "b", 20, 2), Due("a", "d", 30, 3)])
    assert dues.owed_by("a") == {"b": 17, "d": 3}
    assert dues.owed_to("a") == {"c": 1}
    assert dues.intervals() == [900, 1800]
    try:
        dues.record(2700, [Due("a", "b", -1, 0)])
    except ValueError as e:
        assert "must be >= 0" in str(e)
    else:
        raise AssertionError("a negative due was recorded")
    assert dues.intervals() == [900, 1800]


def test_a_database_from_before_the_dues_table_gains_it_and_keeps_its_readings(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE devices (device_id TEXT PRIMARY KEY, public_key TEXT, name TEXT, registered_at TEXT)")
    conn.execute("INSERT INTO devices VALUES ('d1', '02', 'm', 'then')")
    conn.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, device_id TEXT, seq INTEGER, time FLOAT, "
                 "import_wh INTEGER, export_wh INTEGER, power_w FLOAT, voltage_v FLOAT, extra TEXT, source TEXT, "
                 "received_at TEXT, cose BLOB)")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    db = open_database(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert DuesStore(db).record(0, [Due("a", "b", 1, 1)]) == [Due("a", "b", 1, 1)]
    assert db.execute("SELECT name FROM devices").fetchall() == [("m",)]


def test_buyer_and_seller_books_survive_restarts(tmp_path: Path, ledger: LocalLedger) -> None:
    asyncio.run(_books_survive_restarts(tmp_path, ledger))


async def _books_survive_restarts(tmp_path: Path, ledger: LocalLedger) -> None:
    clock = FixedClock()
    ledger.clock = clock
    a = make_node(tmp_path, "a", ledger, clock, funds=500_000)  # the buyer
    b = make_node(tmp_path, "b", ledger, clock)  # the seller
    buyer_hex, seller_hex = a.public_key.hex(), b.public_key.hex()
    port = free_udp_port()
    server = await serve(b, port=port)
    ctx = await aiocoap.Context.create_client_context()
    gpio = SimulatedGpio()
    relay = Relay(gpio, 17, safe_state="connected")
    try:
        buyer = service(a, tmp_path / "a.db", clock, ctx)
        seller = service(b, tmp_path / "b.db", clock, None, relay)
        cid = await buyer.client.open_channel(channel_uri("127.0.0.1", port), 100_000, 7_200, b.public_key)

        # Interval 900: 300 sat streamed while energy arrived, settled at 700.
        await buyer.paying.send(seller_hex, [100, 100, 100], "stream", 30, interval=900)
        s900 = settlement(900, (buyer_hex, seller_hex, 700, 70))
        await settle(buyer, s900)
        await settle(seller, s900)
        assert a.payer(cid).paid == 700 and b.payee(cid).received == 700
        # The channel's journal says what each payment was for.
        journal = [(e["kind"], e["amount"], json.loads(e["detail"]).get("interval")) for e in a.store.events(cid)]
        assert journal == [("trade-stream", 300, 900), ("trade-settle", 400, 900)]
        # Interval 1800: the seller fell short; 200 streamed, settled at 150.
        await buyer.paying.send(seller_hex, [100, 100], "stream", 20, interval=1800)
        s1800 = settlement(1800, (buyer_hex, seller_hex, 150, 15))
        await settle(buyer, s1800)
        await settle(seller, s1800)
        assert buyer.accounts.prepaid(seller_hex) == 50 and a.payer(cid).paid == 900

        # The buyer restarts: it remembers the 50 paid ahead, and its channel.
        a = make_node(tmp_path, "a", ledger, clock)
        buyer = service(a, tmp_path / "a.db", clock, ctx)
        assert buyer.accounts.owed == {seller_hex: 850} and buyer.accounts.signed == {seller_hex: 900}
        assert buyer.accounts.prepaid(seller_hex) == 50
        summary = buyer.channel_summary()  # what MQTT publishes after each settlement
        assert summary["open"] == 1 and summary["paying"] == {
            seller_hex: {"signed_sat": 900, "owed_sat": 850, "ahead_sat": 50, "unpaid_sat": 0}}
        assert summary["channels"] == [{"channel": cid.hex()[:16], "role": "payer", "peer": seller_hex[:16],
                                        "state": "open", "capacity_sat": 100_000, "paid_sat": 900}]
        # A settlement replayed after the restart changes nothing.
        assert buyer.record_dues(s900) == [] and buyer.accounts.owed == {seller_hex: 850}
        # Interval 2700, settled at 120: the 50 ahead counts, 70 is paid on
        # the same channel (no new one is opened).
        await settle(buyer, settlement(2700, (buyer_hex, seller_hex, 120, 12)))
        assert a.payer(cid).paid == 970 and buyer.stats.channels_opened == 0
        assert buyer.accounts.unpaid(seller_hex) == buyer.accounts.prepaid(seller_hex) == 0

        # Interval 3600 is settled at 600 (over the seller's credit of 500)
        # and the buyer dies before paying.
        s3600 = settlement(3600, (buyer_hex, seller_hex, 600, 60))
        buyer.record_dues(s3600)
        await settle(seller, settlement(2700, (buyer_hex, seller_hex, 120, 12)))
        await settle(seller, s3600)
        assert str(relay.state) == "disconnected" and seller.credit.behind() == {buyer_hex: 600}

        # The seller restarts too: its relay stays open on the buyer still
        # 600 sat behind, not back to connected as if nothing were owed.
        b = make_node(tmp_path, "b", ledger, clock)
        await server.shutdown()
        server = await serve(b, port=port)
        relay = Relay(gpio, 17, safe_state="connected")  # a restarted process starts from the safe state
        seller = service(b, tmp_path / "b.db", clock, None, relay)
        assert seller.credit.owed == {buyer_hex: 1570} and seller.credit.received == {buyer_hex: 970}
        assert str(relay.state) == "disconnected"

        # The buyer restarts and the next settlement (nothing new with this
        # seller) pays the 600 it still owed; the seller's relay closes.
        a = make_node(tmp_path, "a", ledger, clock)
        buyer = service(a, tmp_path / "a.db", clock, ctx)
        assert buyer.accounts.unpaid(seller_hex) == 600
        await settle(buyer, settlement(4500))
        assert a.payer(cid).paid == b.payee(cid).received == 1570
        assert buyer.accounts.unpaid(seller_hex) == 0
        assert seller.credit.behind() == {} and str(relay.state) == "connected"
    finally:
        await ctx.shutdown()
        await server.shutdown()


@pytest.mark.parametrize("back", ["after the interval", "in the middle of it"])
def test_a_restart_between_clearing_and_settling_still_settles_and_pays_once(tmp_path: Path, ledger: LocalLedger,
                                                                           back: str) -> None:
    asyncio.run(_restart_before_settling(tmp_path, ledger, back == "in the middle of it"))


async def _restart_before_settling(tmp_path: Path, ledger: LocalLedger, mid_interval: bool) -> None:
    from microgrid.coordinator.market.clearing import clear_interval, trade_value
    from microgrid.coordinator.market.orders import make_order
    from microgrid.coordinator.market.service import MarketRound
    from microgrid.coordinator.overlay.memory import MemoryNetwork, MemoryOverlay
    from microgrid.coordinator.trading.exchange import LIVE_PREFIX, METERING_PREFIX
    from microgrid.shared import reading, secp256k1

    from ..market.overlay_stub import ManualClock

    start = 1_700_000_100 // 900 * 900 + 900
    clock = ManualClock(start - 400)
    ledger.clock = clock
    a = make_node(tmp_path, "a", ledger, clock, funds=500_000)
    b = make_node(tmp_path, "b", ledger, clock)
    port = free_udp_port()
    # The seller's coordinator: its channel node, and its live totals
    # (trading/live.py) for the buyer to stream by.
    seller_live = LiveRecords()
    site = channel_site(b)
    site.add_resource(list(LIVE_PATH), LiveResource(seller_live.get))
    server = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
    ctx = await aiocoap.Context.create_client_context()
    net = MemoryNetwork(clock.now)
    market = MarketSettings(enabled=True, zone=ZONE, gate_lead_s=300, order_lead_s=600)
    # The buyer's meter takes 300 Wh during the interval.
    secret = bytes(range(1, 33))
    meter = secp256k1.public_key(secret)

    def buyer_service() -> TradingService:
        overlay = MemoryOverlay(a.identity, net)
        store = ReadingStore(open_database(tmp_path / "a.db"))
        return TradingService(key=a.identity, overlay=overlay, market=market, clock=clock, store=store,
                              device_ids=lambda: [reading.device_id(meter)], node=a, context=ctx,
                              own_uri="coap://127.0.0.1:1/channel", sleep=clock.sleep,
                              settings=TradingSettings(renew_before_s=900))

    try:
        buyer = buyer_service()
        await buyer.overlay.start()
        buyer.store.register_device(meter)
        for i in range(16):
            m = reading.build(secret, meter, i + 1, start + 60 * i, 20 * i, 0, 0, 230.0, [])
            buyer.store.insert(reading.parse(m), m)
        cid = await buyer.client.open_channel(channel_uri("127.0.0.1", port), 100_000, 7_200, b.public_key)
        # Gate closure: the book is cleared (400 Wh bought from b) and kept ...
        buy = make_order(a.identity, "buy", ZONE, start, 400, 200, start + 900, 1, int(clock.now()))
        sell = make_order(b.identity, "sell", ZONE, start, 400, 100, start + 900, 2, int(clock.now()))
        cleared = clear_interval([buy, sell], ZONE, start, 900, market.rules())
        assert len(cleared.trades) == 1
        buyer._keep_book(MarketRound(start, book=[buy, sell], cleared=cleared))
        seller_overlay = MemoryOverlay(b.identity, net)
        await seller_overlay.start()
        # The seller shows 400 Wh exported, live (from its coordinator, found
        # by its directory record) and then as its metering.
        await Directory(seller_overlay, {"coap": channel_uri("127.0.0.1", port), "zone": ZONE}).publish()
        seller_live.put(start, seller_overlay.sign(f"{LIVE_PREFIX}{ZONE}/{start}",
                                                   json.dumps({"export_wh": 400, "import_wh": 0}).encode(), 3600))
        await seller_overlay.put(f"{METERING_PREFIX}{ZONE}/{start}",
                                 json.dumps({"export_wh": 400, "import_wh": 0}).encode(), 3600)
        before = 0
        if mid_interval:  # it streamed for the first 100 Wh before it stopped
            clock.t = start + 300
            before = trade_value(100, cleared.trades[0].price_sat_per_kwh)
            await buyer.paying.send(b.public_key.hex(), [before], "stream", 100, interval=start)
        # ... and the buyer stops, and is back after the interval, or in the
        # middle of it.
        await buyer.overlay.stop()
        clock.t = start + 450 if mid_interval else start + 900 + 300

        # Back up: it settles the interval from the kept book and pays.
        a = make_node(tmp_path, "a", ledger, clock)
        buyer = buyer_service()
        await buyer.overlay.start()
        assert buyer.resume() == ([start, start + 900] if mid_interval else [start])
        assert buyer.stats.picked_up == ([start, start + 900] if mid_interval else [start])  # the demo reports it
        await asyncio.gather(*buyer._resumed)
        settled = buyer.stats.settled[start]
        owed = sum(p.sats for p in settled.payments if p.kind == P2P and p.payer == a.public_key.hex())
        assert settled.delivered_wh == 300 and owed > 0
        assert a.payer(cid).paid == b.payee(cid).received == owed  # once, not twice
        if mid_interval:  # it streamed on from where it stopped
            streamed = [e["amount"] for e in a.store.events(cid) if e["kind"] == "trade-stream"]
            assert streamed[0] == before and len(streamed) > 1 and sum(streamed) == owed
            assert buyer.stats.streamed_sat == owed - before
        assert buyer.dues.owed_by(a.public_key.hex()) == {b.public_key.hex(): owed}
        assert buyer.books.is_settled(ZONE, start) is True and buyer.stats.errors == 0
        # Restarted again, there is nothing left to pick up.
        await buyer.overlay.stop()
        again = buyer_service()
        clock.t = start + 900 + 300
        assert again.resume() == []
        # A book whose orders no longer clear to the kept hash is refused.
        again.books.save(StoredBook(ZONE, start + 900, 900, b"\x00" * 32, [buy.encoded]))
        assert again.resume() == [] and again.books.is_settled(ZONE, start + 900) is False
        await seller_overlay.stop()
    finally:
        await ctx.shutdown()
        await server.shutdown()
