"""The coordinator as installed: with a [zone] section its overlay drops
non-members' records, its roster comes from the records folder at start,
and a channel open over CoAP from a key outside the zone is refused while
a member's (with no allow-list at all) goes through."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiocoap
import pytest

from microgrid.coordinator.app import Coordinator, load_or_create_key
from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.channel import State
from microgrid.coordinator.channels.transport import ChannelClient
from microgrid.coordinator.config import from_dict
from microgrid.coordinator.membership.install import found_and_admit
from microgrid.coordinator.overlay import MemoryNetwork, MemoryOverlay

from ..channels.conftest import FixedClock, ledger, make_node  # noqa: F401 - the ledger fixture
from ..conftest import free_udp_port
from .helpers import DAY


def test_zone_members_only_on_the_appliance(tmp_path: Path, ledger: LocalLedger) -> None:
    clock = FixedClock()
    ledger.clock = clock
    buyer = make_node(tmp_path, "buyer", ledger, clock, funds=500_000)
    stranger = make_node(tmp_path, "stranger", ledger, clock, funds=500_000)
    seller_key = load_or_create_key(tmp_path / "coordinator.key")
    zone = found_and_admit(tmp_path / "zone", "elm-street",
                           [(buyer.public_key, "EAN-1", "F1"),
                            (seller_key.public_key.to_bytes(compressed=True), "EAN-2", "F1")],
                           int(clock.t) - DAY, int(clock.t) + 30 * DAY)
    (tmp_path / "pw").write_text("seller-pw\n")
    port = free_udp_port()
    config = from_dict({
        "coap": {"port": port}, "store": {"path": str(tmp_path / "seller.db")},
        "channels": {"enabled": True, "wallet_password_file": str(tmp_path / "pw"), "close_margin_s": 1_800,
                     "lock_s": 7_200, "renew_before_s": 1_800},
        "zone": {"id": zone.id, "name": zone.name, "admins": zone.admins, "threshold": zone.threshold,
                 "founded": zone.founded, "records_dir": zone.records_dir},
    })

    async def go() -> None:
        net = MemoryNetwork(clock.now)
        overlay = MemoryOverlay(seller_key, net)
        seller = Coordinator(config, clock=clock, chain=ledger, overlay=overlay)
        await seller.start()
        client = await aiocoap.Context.create_client_context()
        try:
            assert overlay.accept is not None
            assert seller.membership.roster.is_member(buyer.public_key, clock.now())
            # Its own admission went onto the board at start.
            assert any(k.startswith("mg/members/") for k in net.values)
            for node in (stranger, buyer):
                other = MemoryOverlay(node.identity, net)
                await other.start()
                await other.put("mg/metering/elm-street/900", b"{}", 3600)
            assert [r.publisher for r in await overlay.get("mg/metering/elm-street/900")] == [buyer.public_key]
            with pytest.raises(Exception, match="not a current member"):
                await ChannelClient(stranger, client).open_channel(seller.coap_uri("channel"), 100_000, 7_200)
            cid = await ChannelClient(buyer, client).open_channel(seller.coap_uri("channel"), 100_000, 7_200)
            assert seller.channel_lifecycle.node.payee(cid).state == State.OPEN
        finally:
            await client.shutdown()
            await seller.stop()

    asyncio.run(go())
