"""A seller cuts off a buyer whose stream stops, during the interval, not
only after its settlement: the seller's own meters (real signed readings
in its database) show the export, the buyer's signed live record on the
overlay shows its import, and no payment arrives."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bitcoinx import PrivateKey

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.devices.gpio import Relay, SimulatedGpio
from microgrid.coordinator.market.clearing import ClearedInterval, Trade, ZoneRules
from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.overlay.memory import MemoryNetwork, MemoryOverlay
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.coordinator.trading.exchange import LIVE_PREFIX
from microgrid.coordinator.trading.service import TradingService, TradingSettings
from microgrid.shared import reading, secp256k1

from ..channels.conftest import ledger, make_node  # noqa: F401 - the ledger fixture
from ..market.overlay_stub import ManualClock

START = 1_700_000_100 // 900 * 900 + 900
METER_SECRET = bytes(range(1, 33))


@pytest.mark.parametrize("overlay_read_s", [0, 200])
def test_a_buyer_that_stops_paying_is_cut_off_before_the_interval_ends(tmp_path: Path, ledger: LocalLedger,
                                                                       overlay_read_s: int) -> None:
    asyncio.run(_cutoff(tmp_path, ledger, overlay_read_s))


async def _cutoff(tmp_path: Path, ledger: LocalLedger, overlay_read_s: int) -> None:
    clock = ManualClock(START - 1)
    ledger.clock = clock
    seller_node = make_node(tmp_path, "seller", ledger, clock)
    buyer_key = PrivateKey.from_random()
    buyer = buyer_key.public_key.to_bytes(compressed=True)
    net = MemoryNetwork(clock.now)
    seller_overlay = MemoryOverlay(seller_node.identity, net)
    buyer_overlay = MemoryOverlay(buyer_key, net)
    await seller_overlay.start()
    await buyer_overlay.start()

    # The seller's meter exports 40 Wh a minute through the interval.
    store = ReadingStore(open_database(tmp_path / "seller.db"))
    meter = secp256k1.public_key(METER_SECRET)
    store.register_device(meter)
    for i in range(16):
        m = reading.build(METER_SECRET, meter, i + 1, START + 60 * i, 0, 40 * i, 0, 230.0, [])
        store.insert(reading.parse(m), m)

    polls: list[tuple[float, str]] = []
    gpio = SimulatedGpio(clock=clock.now)
    relay = Relay(gpio, 17, safe_state="connected")

    async def sleep(s: float) -> None:
        polls.append((clock.now(), str(relay.state)))
        await clock.sleep(s)

    seller = TradingService(
        key=seller_node.identity, overlay=seller_overlay, market=MarketSettings(enabled=True, zone="z"),
        clock=clock, store=store, device_ids=lambda: [reading.device_id(meter)], node=seller_node,
        context=None, own_uri="coap://127.0.0.1:1/channel",  # type: ignore[arg-type]
        settings=TradingSettings(credit_sat=100, stream_poll_s=60), sleep=sleep, export_relay=relay)
    # 600 Wh sold to the buyer at 2,000 sat/kWh: 1,200 sat over the interval.
    trade = Trade(b"b" * 32, b"s" * 32, buyer, seller_node.public_key, 600, 2000, 1200, 0)
    cleared = ClearedInterval("z", START, 900, ZoneRules(), 2000, 600, (trade,), (), {})
    # The buyer publishes that it has taken 600 Wh, and pays nothing.
    await buyer_overlay.put(f"{LIVE_PREFIX}z/{START}", json.dumps({"export_wh": 0, "import_wh": 600}).encode(), 3600)

    # With overlay_read_s, every read of the overlay is slow (a loaded
    # network): that many seconds pass each time. Polls do not queue up
    # behind it, so the stream still ends with the interval, not many
    # minutes later with stale figures.
    get = seller_overlay.get

    async def timed_get(key: str, timeout_s: float | None = None, *, publishers=None):  # type: ignore[no-untyped-def]
        polls.append((clock.now(), str(relay.state)))
        await clock.sleep(overlay_read_s)
        return await get(key, timeout_s, publishers=publishers)
    seller_overlay.get = timed_get  # type: ignore[method-assign]
    published: list[bytes] = []
    put = seller_overlay.put

    async def spied_put(key: str, value: bytes, ttl_s: int, **kw):  # type: ignore[no-untyped-def]
        if key.startswith(LIVE_PREFIX):
            published.append(value)
        return await put(key, value, ttl_s, **kw)
    seller_overlay.put = spied_put  # type: ignore[method-assign]

    await seller.stream_interval(cleared)
    assert clock.now() <= START + 900 + 2 * overlay_read_s, clock.now() - START  # not 15 slow polls

    cut = [t for t, state in polls if state == "disconnected"]
    # Before the interval ends; at full speed, within its first quarter
    # (100 sat of credit is 50 Wh, under two minutes of this export).
    assert cut and cut[0] < START + (900 if overlay_read_s else 225), polls
    # By the end the seller had exported 600 Wh: the buyer's stream owed 1,200 sat.
    assert seller.credit.behind() == {buyer.hex(): 1200}
    assert str(relay.state) == "disconnected" and seller.credit.disconnects == 1
    summary = seller.channel_summary()
    assert summary["export_relay"] == "disconnected" and summary["export_relay_cuts"] == 1
    assert summary["buyers_behind_sat"] == {buyer.hex(): 1200}
    # The seller published its own running export and import for its buyers
    # (kept by the storing nodes for two polls: after reads of 200 s each,
    # its last version is gone from them; its buyers keep what they read).
    seller_overlay.get = get  # type: ignore[method-assign]
    live = await seller.collect_live(START)
    assert live[buyer] == (0, 600)
    assert published and json.loads(published[-1]) == {"export_wh": 600, "import_wh": 0}
    if not overlay_read_s:
        assert live[seller_node.public_key] == (600, 0)
    await seller_overlay.stop()
    await buyer_overlay.stop()
