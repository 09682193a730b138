"""A buyer's payments to one seller, over as many channels as it takes.

`ChannelPayer.pay_one` sends one update to a seller through a usable
channel (trading/rollover.py says which), opening the next channel when
none is, before the current one reaches its close margin or fills, so a
stream never waits on an expired or full channel. When the seller refuses
more on a channel (it closed it, its margin is wider than ours, it is
full on its side) the same payment goes through the next channel at once.
Channels no payment will use again are asked to close, once each; the
seller's own lifecycle closes them at its margin if that request is lost.

The service (trading/service.py) decides what to pay and keeps the books;
this module only gets it paid.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import aiocoap.error

from ..channels.chain import ChainError, call
from ..channels.channel import AmountError, DustError, LockTimeError, PayerChannel, State, StateError
from ..channels.protocol import ChannelNode, ProtocolError
from ..channels.transport import ChannelClient
from ..channels.txs import txid_hex
from ..clock import Clock
from .rollover import ROLL_OVER_CODES, RolloverPolicy

log = logging.getLogger("microgrid.trading")


class ChannelPayer:
    def __init__(self, node: ChannelNode, client: ChannelClient, clock: Clock, rollover: RolloverPolicy,
                 capacity_sat: int, lock_s: int, lookup_uri: Callable[[str], Awaitable[str | None]],
                 stats: Any, spawn: Callable[[Any], None]) -> None:
        self.node = node
        self.client = client
        self.clock = clock
        self.rollover = rollover
        self.capacity_sat = capacity_sat
        self.lock_s = lock_s
        self.lookup_uri = lookup_uri
        self.stats = stats  # TradingStats: channels_opened, rollover_s, refused_rollovers
        self.spawn = spawn  # runs a coroutine in the background, cancelled when trading stops
        self.channel_to: dict[str, bytes] = {}  # payee public key hex -> the channel paid last
        self.refused: set[bytes] = set()  # channels a payee refused further payments on (this run)
        self.close_asked: set[bytes] = set()  # old channels we asked the payee to close (this run)

    def channels(self, payee_hex: str) -> list[tuple[bytes, PayerChannel]]:
        """Our channels paying `payee_hex`, in any state."""
        peer = bytes.fromhex(payee_hex)
        return [(cid, e.channel) for cid, e in self.node.channels.items()
                if e.role == "payer" and e.peer == peer and isinstance(e.channel, PayerChannel)]

    async def channel(self, payee_hex: str, amount: int = 0) -> bytes:
        """The channel to pay `amount` through: a usable one, or a new one
        opened now; the old ones are then asked to close."""
        cid = self.rollover.pick(self.channels(payee_hex), self.clock.now(), amount, self.refused)
        if cid is None:
            uri = await self.lookup_uri(payee_hex)
            if uri is None:
                raise LookupError(f"no directory entry for {payee_hex[:16]}")
            started = self.clock.now()
            cid = await self.client.open_channel(uri, self.capacity_sat, self.lock_s, bytes.fromhex(payee_hex))
            self.stats.channels_opened += 1
            self.stats.rollover_s.append(self.clock.now() - started)
            log.info("opened channel %s to %s", cid.hex()[:16], payee_hex[:16])
        self.channel_to[payee_hex] = cid
        self._retire(payee_hex, cid, amount)
        return cid

    def _retire(self, payee_hex: str, keep: bytes, amount: int) -> None:
        """Ask the payee to close each of our other open channels to it
        that cannot take a payment like this one."""
        channels = self.channels(payee_hex)
        old = set(self.rollover.to_retire(channels, self.clock.now(), amount, {keep}))
        old |= {cid for cid, ch in channels if cid in self.refused and ch.state == State.OPEN}
        for cid in sorted(old - self.close_asked - {keep}):
            self.close_asked.add(cid)
            self.spawn(self._ask_close(cid))

    async def _ask_close(self, cid: bytes) -> None:
        try:
            await self.client.close(cid)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("asking the payee to close channel %s failed (it closes it by itself before the lock "
                        "time): %s", cid.hex()[:16], e)

    async def _put_back_funding(self, cid: bytes) -> bool:
        """The payee refuses updates because the chain does not show our
        funding (dropped from mempools): broadcast it again now rather
        than at the lifecycle's next tick; the payee looks again at the next
        update. True if it went back (then the update is worth resending).
        Not a rollover: a new channel would lock more coins while this
        one's funding is still ours to put back."""
        ch = self.node.payer(cid)
        if ch.funding_tx is None:
            return False
        chain = self.node.chain
        try:
            if await call(chain, chain.confirmations, txid_hex(ch.funding_tx)) >= 0:
                return False  # on the chain already: the payee will see it at its next look
            await call(chain, chain.broadcast, ch.funding_tx)
        except ChainError as e:
            log.warning("channel %s: its funding is not on the chain and broadcasting it again failed (the "
                        "lifecycle retries): %s", cid.hex()[:16], e)
            return False
        log.info("channel %s: the payee did not see its funding on the chain; broadcast it again", cid.hex()[:16])
        return True

    async def _moved(self, payee_hex: str, cid: bytes) -> bool:
        """Look the payee up again; True when its directory record now
        names another address, which the channel then uses (and keeps)."""
        uri = await self.lookup_uri(payee_hex)
        entry = self.node.channels[cid]
        if uri is None or uri == entry.peer_uri:
            return False
        log.info("channel %s: %s moved from %s to %s", cid.hex()[:16], payee_hex[:16], entry.peer_uri, uri)
        entry.peer_uri = uri
        self.node.store.save_channel(entry.role, entry.channel, entry.peer, uri, entry.key_index)
        return True

    async def pay_one(self, payee_hex: str, amount: int) -> int:
        """One update of `amount` to `payee_hex`, on the next channel if the
        current one refuses it (locally or at the payee: closed, near its
        lock time, full). Returns the amount acknowledged on the channel."""
        cid = await self.channel(payee_hex, amount)
        sent = self.node.payer(cid).sent
        target = (sent.amount if sent is not None else 0) + amount  # signed in all once this one is paid
        try:
            try:
                return await self.client.pay(cid, amount)
            except (asyncio.TimeoutError, OSError, aiocoap.error.NetworkError):
                # Unreachable where the channel was opened: the payee may
                # have come back elsewhere (a restart on another address).
                if not await self._moved(payee_hex, cid):
                    raise
                # Whatever the failed attempt signed goes out first, never twice.
                await self.client.resend_pending(cid)
                if self.node.payer(cid).acked_amount < target:
                    return await self.client.pay(cid, amount)
                return self.node.payer(cid).acked_amount
        except (LockTimeError, AmountError, DustError, StateError) as e:
            why = str(e)
        except ProtocolError as e:
            if e.code == "funding" and await self._put_back_funding(cid):
                # The refused update is still pending: resend it, not a second one.
                await self.client.resend_pending(cid)
                if self.node.payer(cid).acked_amount < target:  # refused before ours was signed
                    return await self.client.pay(cid, amount)
                return self.node.payer(cid).acked_amount
            if e.code not in ROLL_OVER_CODES:
                raise
            why = f"{e.code}: {e.detail}"
        log.info("channel %s to %s takes no more payments (%s): moving to the next", cid.hex()[:16],
                 payee_hex[:16], why)
        self.refused.add(cid)
        self.stats.refused_rollovers += 1
        cid = await self.channel(payee_hex, amount)
        return await self.client.pay(cid, amount)
