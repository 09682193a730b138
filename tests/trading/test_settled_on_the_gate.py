"""The trading conductor settles only what is agreed and what was known:
an interval whose book no quorum agreed on is not settled and says why
(its metering is published all the same, for the coordinators that do
settle); publishing an interval's metering closes it, so a reading dated
into it afterwards counts in a later interval."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.market.clearing import ClearedInterval, Comparison, Disagreement, ZoneRules
from microgrid.coordinator.market.repair import Repair
from microgrid.coordinator.market.service import MarketRound
from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.market.settlement import unsettled_report
from microgrid.coordinator.overlay.memory import MemoryNetwork, MemoryOverlay
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import HELD_CLOSED, ReadingStore
from microgrid.coordinator.trading.exchange import METERING_PREFIX
from microgrid.coordinator.trading.service import TradingService, TradingSettings
from microgrid.shared import reading, secp256k1

from ..channels.conftest import ledger, make_node  # noqa: F401 - the ledger fixture
from ..market.overlay_stub import ManualClock

START = 1_700_000_100 // 900 * 900 + 900
METER_SECRET = bytes(range(1, 33))


def test_a_book_no_quorum_agreed_on_is_not_settled_and_its_interval_is_closed(tmp_path: Path,
                                                                              ledger: LocalLedger) -> None:
    asyncio.run(_unsettled(tmp_path, ledger))


async def _unsettled(tmp_path: Path, ledger: LocalLedger) -> None:
    clock = ManualClock(START + 900)
    ledger.clock = clock
    node = make_node(tmp_path, "c", ledger, clock)
    net = MemoryNetwork(clock.now)
    overlay = MemoryOverlay(node.identity, net)
    await overlay.start()
    store = ReadingStore(open_database(tmp_path / "c.db"))
    meter = secp256k1.public_key(METER_SECRET)
    store.register_device(meter)
    device = reading.device_id(meter)
    for i, (dt, wh) in enumerate([(0, 0), (600, 70)]):
        m = reading.build(METER_SECRET, meter, i + 1, START + dt, 0, wh, 0, 230.0, [])
        store.insert(reading.parse(m), m)
    trading = TradingService(
        key=node.identity, overlay=overlay, market=MarketSettings(enabled=True, zone="z"), clock=clock,
        store=store, device_ids=lambda: [device], node=node, context=None,  # type: ignore[arg-type]
        own_uri="coap://127.0.0.1:1/channel", settings=TradingSettings(settle_delay_s=60), sleep=clock.sleep)
    cleared = ClearedInterval("z", START, 900, ZoneRules(), None, 0, (), (), {}, hash=b"\x01" * 32)
    comparison = Comparison(cleared.key, cleared.hash, (), (Disagreement("p1", b"\x02" * 32),
                                                            Disagreement("p2", b"\x03" * 32)))
    repair = Repair(cleared, [], comparison, peers=3, agreeing=1)
    trading.market.rounds[START] = MarketRound(START, cleared=cleared, comparison=comparison, repair=repair)

    assert await trading.settle_interval(START) is None
    assert START not in trading.stats.settled
    why = trading.stats.unsettled[START]
    assert why.startswith("no quorum holds our book: 1 of 3")
    assert unsettled_report("z", START, 900, why)["settled"] is False
    # Our metering went out all the same (70 Wh exported), and the interval is closed.
    recs = await overlay.get(f"{METERING_PREFIX}z/{START}")
    assert [json.loads(r.body) for r in recs] == [{"export_wh": 70, "import_wh": 0}]
    assert store.closed_until() == START + 900
    late = reading.build(METER_SECRET, meter, 3, START + 800, 0, 90, 0, 230.0, [])
    store.insert(reading.parse(late), late)
    assert store.last_reading(device)["held"] == HELD_CLOSED  # type: ignore[index]
    assert trading.metered(START).export_wh == 70 and trading.metered(START + 900).export_wh == 20
    await overlay.stop()
