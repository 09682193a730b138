"""The appliance runs the channel lifecycle by itself: a seller
coordinator closes an incoming channel within its configured margin of the
lock time, with nobody calling close, and tells the buyer over CoAP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiocoap
import pytest

from microgrid.coordinator.app import Coordinator
from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.channel import State
from microgrid.coordinator.channels.transport import ChannelClient, channel_uri, serve
from microgrid.coordinator.config import Config, ConfigError, from_dict

from ..conftest import free_udp_port
from .conftest import FixedClock, make_node


def seller_config(tmp_path: Path, port: int, buyer: bytes) -> Config:
    (tmp_path / "pw").write_text("seller-pw\n")
    return from_dict({
        "coap": {"port": port},
        "store": {"path": str(tmp_path / "seller.db")},
        "channels": {"enabled": True, "wallet_password_file": str(tmp_path / "pw"), "close_margin_s": 1_800,
                     "lifecycle_every_s": 1, "lock_s": 7_200,
                     "renew_before_s": 1_800, "allowed_peers": [buyer.hex()]},
    })


def test_the_appliance_closes_incoming_channels_before_the_lock_time(tmp_path: Path, ledger: LocalLedger) -> None:
    clock = FixedClock()
    ledger.clock = clock
    ps, pb = free_udp_port(), free_udp_port()
    buyer = make_node(tmp_path, "buyer", ledger, clock, funds=500_000, uri=channel_uri("127.0.0.1", pb))
    config = seller_config(tmp_path, ps, buyer.public_key)

    async def go() -> None:
        seller = Coordinator(config, clock=clock, chain=ledger)
        await seller.start()
        server_b = await serve(buyer, "127.0.0.1", pb)
        client = ChannelClient(buyer, await aiocoap.Context.create_client_context())
        try:
            cid = await client.open_channel(seller.coap_uri("channel"), 100_000, 7_200)
            await client.pay(cid, 2_500)
            node = seller.channel_lifecycle.node
            assert node.payee(cid).terms.refund_locktime == clock.t + 7_200
            await asyncio.sleep(2.5)  # a few ticks: nothing is due yet
            assert node.payee(cid).state == State.OPEN and seller.channel_lifecycle.ticks >= 2
            clock.t += 7_200 - 1_800  # the configured margin before the lock time
            for _ in range(200):  # up to 20 s on a busy machine; a tick is every second
                # the buyer takes the close before its answer reaches the seller
                if buyer.payer(cid).state == State.CLOSED and node.payee(cid).payer_notified:
                    break
                await asyncio.sleep(0.1)
            assert node.payee(cid).state == State.CLOSED and node.payee(cid).payer_notified
            assert buyer.payer(cid).state == State.CLOSED and buyer.payer(cid).closed_amount == 2_500
            assert ledger.spent_by(buyer.payer(cid).funding) == buyer.payer(cid).closing_txid
        finally:
            await client.context.shutdown()
            await server_b.shutdown()
            await seller.stop()
        assert seller._lifecycle_task is None

    asyncio.run(go())


@pytest.mark.parametrize("channels,match", [
    ({"close_margin_s": 30}, "close_margin_s"),
    ({"lock_s": 7_200, "close_margin_s": 7_000}, "lock_s"),
    ({"lock_s": 86_400, "close_margin_s": 3_600}, "renew_before_s"),  # the default day to renew does not fit
    ({"lifecycle_every_s": 3_601}, "lifecycle_every_s"),  # fewer than three looks inside the margin
    ({"full_below_sat": -1}, "full_below_sat"),
])
def test_lifecycle_settings_are_validated(channels: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict({"channels": channels})
