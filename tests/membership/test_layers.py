"""Every layer counts members only (issue 14): any key may publish orders,
list itself in the zone, open channels and publish metering and live
totals; only members' count. Each attack with the membership predicate in
place, and the same attack without it to show the test can fail."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.channels.admission import Admission
from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.channel import State
from microgrid.coordinator.channels.messages import decode
from microgrid.coordinator.market import book as bk
from microgrid.coordinator.market.orders import make_order
from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.membership.gate import MembershipGate
from microgrid.coordinator.membership.roster import Roster
from microgrid.coordinator.overlay import MemoryNetwork, MemoryOverlay
from microgrid.coordinator.overlay.directory import Directory
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.coordinator.trading.service import TradingService

from ..channels.conftest import FixedClock, ledger, make_node  # noqa: F401 - the ledger fixture
from .helpers import DAY, T0, pub, zone

NAME = "elm-street"
START = (T0 // 900 + 100) * 900


class Street:
    """A zone with two admitted members, a revoked one and 50 strangers."""

    def __init__(self) -> None:
        self.z = zone(3, 2, NAME)
        self.clock = FixedClock(T0 + 10)
        self.members = [PrivateKey.from_random() for _ in range(2)]
        self.revoked = PrivateKey.from_random()
        self.strangers = [PrivateKey.from_random() for _ in range(50)]
        self.roster = Roster(self.z.zone)
        for m in self.members + [self.revoked]:
            self.roster.offer(self.z.admit(pub(m), issued=T0 - DAY), self.clock.now())
        self.roster.offer(self.z.revoke(pub(self.revoked), issued=T0), self.clock.now())
        self.gate = MembershipGate(self.roster, self.clock.now)
        self.net = MemoryNetwork(self.clock.now)

    @property
    def member_keys(self) -> set[bytes]:
        return {pub(m) for m in self.members}

    async def node(self, key: PrivateKey, gated: bool) -> MemoryOverlay:
        o = MemoryOverlay(key, self.net, accept=self.gate.accept_record if gated else None)
        await o.start()
        return o


@pytest.fixture
def street() -> Street:
    return Street()


def test_fifty_fake_keys_are_not_listed_as_members(street: Street) -> None:
    async def main() -> tuple[set[str], set[str]]:
        for k in street.members + [street.revoked] + street.strangers:
            o = await street.node(k, gated=False)
            await Directory(o, {"coap": "coap://127.0.0.1:1/channel", "zone": NAME}).publish()
        gated = Directory(await street.node(street.members[0], gated=True), {"zone": NAME})
        open_ = Directory(await street.node(street.members[0], gated=False), {"zone": NAME})
        return set(await gated.members(NAME)), set(await open_.members(NAME))

    listed, without = asyncio.run(main())
    assert listed == {k.hex() for k in street.member_keys}
    assert len(without) == 53  # without the filter: every key that said so


def _order(key: PrivateKey, nonce: int = 0) -> Any:
    return make_order(key, "sell", NAME, START, 500, 100, START + 900, nonce, T0, 900)


def test_orders_of_non_members_never_enter_the_book(street: Street) -> None:
    async def main() -> tuple[set[bytes], set[bytes], dict[str, int]]:
        for i, k in enumerate(street.members + [street.revoked] + street.strangers):
            await bk.publish_order(await street.node(k, gated=False), _order(k, i), street.clock.now())
        # A member republishes a stranger's order under its own signature.
        smuggler = await street.node(street.members[1], gated=False)
        await smuggler.put(bk.order_key(NAME, START), _order(street.strangers[0], 99).encoded, 3600, slot="x")
        reader = await street.node(street.members[0], gated=True)
        book = bk.BookCollector(reader, NAME, START, street.clock, is_member=street.gate.is_member)
        await book.fetch()
        # The book's own check holds without the overlay's filter too.
        bare = bk.BookCollector(await street.node(street.members[0], gated=False), NAME, START, street.clock,
                                is_member=street.gate.is_member)
        await bare.fetch()
        assert {so.order.owner for so in bare.orders()} == street.member_keys
        unfiltered = bk.BookCollector(await street.node(street.members[0], gated=False), NAME, START, street.clock)
        await unfiltered.fetch()
        return ({so.order.owner for so in book.orders()}, {so.order.owner for so in unfiltered.orders()},
                bare.filter.rejected)

    owners, all_owners, rejected = asyncio.run(main())
    assert owners == street.member_keys
    assert len(all_owners) == 53
    assert rejected["not-member"] == 52  # 50 strangers, the revoked member, the smuggled order


def test_channels_open_only_for_current_members(tmp_path: Path, ledger: LocalLedger, street: Street) -> None:
    ledger.clock = street.clock
    member = make_node(tmp_path, "m", ledger, street.clock, funds=500_000)
    stranger = make_node(tmp_path, "x", ledger, street.clock, funds=500_000)
    # The member is admitted (its channel identity is its coordinator key).
    street.roster.offer(street.z.admit(member.public_key, issued=T0 - DAY), street.clock.now())
    seller = make_node(tmp_path, "s", ledger, street.clock, admission=Admission(is_member=street.gate.is_member))

    def code(node: Any) -> str | None:
        reply = decode(seller.handle(node.open_request("coap://s", 100_000, 7_200, seller.public_key).wire))
        return reply.body.get("code") if reply.type == "error" else None

    assert code(stranger) == "forbidden"
    msg = opened = member.open_request("coap://s", 100_000, 7_200, seller.public_key)
    while msg is not None:
        msg = member.on_reply(msg, seller.handle(msg.wire))
    assert seller.payee(opened.channel_id).state == State.OPEN
    # The allow-list stays an optional extra restriction: a member not on it is refused.
    seller.admission = Admission(frozenset({stranger.public_key}), is_member=street.gate.is_member)
    assert code(member) == "forbidden" and code(stranger) == "forbidden"
    # Revoked: refused from then on.
    seller.admission = Admission(is_member=street.gate.is_member)
    street.roster.offer(street.z.revoke(member.public_key, issued=T0 + 5), street.clock.now())
    assert code(member) == "forbidden"
    # Without a zone, the allow-list alone decides, and an empty one admits nobody (as before).
    seller.admission = Admission()
    assert code(stranger) == "forbidden"


def test_metering_and_live_totals_count_members_only(tmp_path: Path, ledger: LocalLedger, street: Street) -> None:
    node = make_node(tmp_path, "t", ledger, street.clock)

    async def main() -> tuple[set[bytes], set[bytes], set[bytes]]:
        overlay = await street.node(street.members[0], gated=False)  # the service's own filter, alone

        def service(is_member: Any) -> TradingService:
            return TradingService(key=street.members[0], overlay=overlay,
                                  market=MarketSettings(enabled=True, zone=NAME), clock=street.clock,
                                  store=ReadingStore(open_database(tmp_path / "t.db")), device_ids=lambda: [],
                                  node=node, context=None,  # type: ignore[arg-type]
                                  own_uri="coap://127.0.0.1:1/channel", is_member=is_member)

        svc = service(street.gate.is_member)
        for k in street.members + [street.revoked] + street.strangers:
            o = await street.node(k, gated=False)
            await o.put(svc.exchange.metering_key(START), json.dumps({"export_wh": 5000, "import_wh": 0}).encode(), 3600)
            await o.put(svc.exchange.live_key(START), json.dumps({"export_wh": 4000, "import_wh": 0}).encode(), 3600)
        metered = {m.participant for m in await svc.collect_metering(START)}
        live = set(await svc.collect_live(START))
        everyone = {m.participant for m in await service(None).collect_metering(START)}
        return metered, live, everyone

    metered, live, everyone = asyncio.run(main())
    assert metered == live == street.member_keys
    assert len(everyone) == 53


def test_overlay_filter_drops_non_members_everywhere_but_the_board(street: Street) -> None:
    async def main() -> tuple[int, int]:
        for k in street.strangers[:5]:
            o = await street.node(k, gated=False)
            await o.put("mg/metering/elm-street/900", b"{}", 3600)
            await o.put(street.gate.board, street.z.admit(pub(k)), 3600)  # a valid record, published by anyone
        reader = await street.node(street.members[0], gated=True)
        return len(await reader.get("mg/metering/elm-street/900")), len(await reader.get(street.gate.board))

    assert asyncio.run(main()) == (0, 5)
