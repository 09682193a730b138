"""Trading with [market] round_records (market/rounds.py): a coordinator
publishes its meter total and its orders for two intervals on in ONE
record, settles from the round's records of members only, and says what it
settled on."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bitcoinx import PrivateKey

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.market import rounds
from microgrid.coordinator.market.orders import BUY, make_order
from microgrid.coordinator.market.service import MarketRound
from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.overlay import MemoryNetwork, MemoryOverlay
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.coordinator.trading.service import TradingService

from ..channels.conftest import FixedClock, ledger, make_node  # noqa: F401 - the ledger fixture

ZONE = "elm-street"
START = 1_750_000_500


def test_one_record_carries_the_meter_total_and_the_orders_and_only_members_count(
        tmp_path: Path, ledger: LocalLedger) -> None:  # noqa: F811
    clock = FixedClock(START + 900 + 120)
    node = make_node(tmp_path, "t", ledger, clock)
    me = PrivateKey(bytes(31) + b"\x09")
    neighbours = [PrivateKey(bytes(31) + bytes([20 + i])) for i in range(4)]
    stranger = PrivateKey(bytes(31) + b"\x63")
    members = {k.public_key.to_bytes(compressed=True) for k in [me] + neighbours}

    async def main() -> None:
        net = MemoryNetwork(clock.now)
        overlay = MemoryOverlay(me, net, shards=3)
        await overlay.start()
        svc = TradingService(key=me, overlay=overlay, clock=clock,
                             market=MarketSettings(enabled=True, zone=ZONE, round_records=True).validate(),
                             store=ReadingStore(open_database(tmp_path / "t.db")), device_ids=lambda: [],
                             node=node, context=None,  # type: ignore[arg-type]
                             own_uri="coap://127.0.0.1:1/channel", is_member=members.__contains__)
        # our order for START + 1800, planned by the market an hour ahead
        mine = make_order(me, BUY, ZONE, START + 1800, 700, 150, START + 2700, 1, START - 1800)
        svc.market.rounds[START + 1800] = MarketRound(START + 1800, own_orders=[mine])
        for i, k in enumerate(neighbours + [stranger]):
            o = MemoryOverlay(k, net, shards=3)
            await o.start()
            assert await rounds.publish_round(o, ZONE, rounds.make_round(START, 900, (100 + i, 0), []))
        m = await svc.publish_metering(START)
        metered = {x.participant: x.export_wh for x in await svc.collect_metering(START)}
        assert set(metered) == members  # the stranger's total counts for nothing
        assert metered[me.public_key.to_bytes(compressed=True)] == m.export_wh
        got = await rounds.read_round(overlay, ZONE, START, 900)
        ours = got[me.public_key.to_bytes(compressed=True)]
        assert ours.orders == (mine.encoded,) and ours.meter == (m.export_wh, m.import_wh)
        # one value per household under the round (and one settled record): no metering key
        assert not [k for k in net.values if k.startswith(("mg/metering/", "mg/market/"))]
        settled = rounds.settled_from(await overlay.get(rounds.round_key(ZONE, START)), START)
        assert [s.meters for s in settled.values()] == [len(members)]
        assert settled[me.public_key.to_bytes(compressed=True)].hash == rounds.meters_hash(
            {p: (e, 0) for p, e in metered.items()})
    asyncio.run(main())


def test_after_a_restart_the_meter_total_keeps_the_orders_already_published_for_the_round(
        tmp_path: Path, ledger: LocalLedger) -> None:  # noqa: F811
    # The market published our orders alone at order time (round records
    # carry them); we restarted since, and no market round remembers them.
    # Our meter total for the round must not supersede them away.
    clock = FixedClock(START + 900 + 120)
    node = make_node(tmp_path, "t", ledger, clock)
    me = PrivateKey(bytes(31) + b"\x0b")

    async def main() -> None:
        net = MemoryNetwork(clock.now)
        overlay = MemoryOverlay(me, net, shards=2)
        await overlay.start()
        mine = make_order(me, BUY, ZONE, START + 1800, 700, 150, START + 2700, 1, START - 1800)
        assert await rounds.publish_round(overlay, ZONE, rounds.make_round(START, 900, None, [mine]))
        svc = TradingService(key=me, overlay=overlay, clock=clock,
                             market=MarketSettings(enabled=True, zone=ZONE, round_records=True).validate(),
                             store=ReadingStore(open_database(tmp_path / "t.db")), device_ids=lambda: [],
                             node=node, context=None,  # type: ignore[arg-type]
                             own_uri="coap://127.0.0.1:1/channel")
        assert START + 1800 not in svc.market.rounds
        clock.t += 1  # a newer version
        m = await svc.publish_metering(START)
        ours = (await rounds.read_round(overlay, ZONE, START, 900))[me.public_key.to_bytes(compressed=True)]
        assert ours.meter == (m.export_wh, m.import_wh) and ours.orders == (mine.encoded,)
    asyncio.run(main())


def test_round_records_refuse_a_settle_delay_that_would_miss_the_gate(tmp_path: Path, ledger: LocalLedger) -> None:  # noqa: F811
    import pytest

    from microgrid.coordinator.trading.service import TradingSettings

    clock = FixedClock(START)
    with pytest.raises(ValueError, match="settle_delay_s=600"):
        TradingService(key=PrivateKey(bytes(31) + b"\x0c"), overlay=None, clock=clock,
                       market=MarketSettings(enabled=True, zone=ZONE, round_records=True).validate(),
                       store=ReadingStore(open_database(tmp_path / "t.db")), device_ids=lambda: [],
                       node=make_node(tmp_path, "t", ledger, clock), context=None,  # type: ignore[arg-type]
                       own_uri="coap://127.0.0.1:1/channel", settings=TradingSettings(settle_delay_s=600))
