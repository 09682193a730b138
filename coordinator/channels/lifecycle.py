"""Channels that end by themselves: every step after the payments, retried
until the chain shows it.

A Spilman channel has a deadline. After its refund's lock time the payer
can take back the whole capacity, so a payee that has not closed by then
loses everything it earned; and a payer whose payee vanished has its
money locked until it broadcasts the refund. Nothing here waits for a
person or for the demo: `ChannelLifecycle.tick()` looks at every channel
and takes the next step, and `run()` ticks every `every_s` (clock seconds)
in the appliance.

As payee (seller), for each incoming channel:
- OPEN with a payment, and within the close margin of the lock time (the
  policy's `close_margin`), or with less than `full_below_sat` left:
  close (broadcast the latest update) and tell the payer;
- CLOSING (the closing tx was built, and the broadcast failed or we
  crashed): broadcast that same tx again;
- CLOSED and not on the chain any more (dropped from a mempool): again;
- CLOSED and the payer has not acknowledged the `closed` notice: tell it
  again (the payer believes it only once the chain shows the close).

As payee, too: an incoming channel's funding is watched until it has
`confirmations`; while the chain does not show it (dropped, double-spent)
the channel takes no updates, and takes them again once it is back.

As payer (buyer), for each outgoing channel that is OPEN (or funded with
the refund signed):
- the open stopped after the refund was signed (the funding broadcast
  failed, the `funded` message was lost): broadcast the funding unless the
  chain has it and tell the payee again;
- the funding tx is not on the chain: broadcast it again;
- the funding output is spent though we have not seen a close: ask the
  payee for the closing tx (`close`: it answers with the one it
  broadcast), which the node takes once the chain shows it;
- past the lock time with the funding output unspent (the payee never
  closed): broadcast the refund;
- REFUNDED and the refund not on the chain: broadcast it again.

A payer asking to close (`close` request) is answered by the node at once
(`ChannelNode.rpc_close`). One channel's failure (peer away, chain
unreachable) is logged and retried at the next tick; it never holds up the
others. Every chain call here (confirmations, outputs, closes, refunds, finishing
an open, re-broadcasts) runs in the chain thread for network backends
(`chain.call`), so a slow node or ARC does not stall CoAP.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from bitcoinx import Tx

from .chain import call
from .channel import PayeeChannel, PayerChannel, State
from .messages import Message
from .protocol import ChannelNode, Entry, txid_hex_of
from .txs import txid_hex

log = logging.getLogger("microgrid.channels.lifecycle")

# Send a request to the coordinator at a URI and follow the exchange to its
# end (ChannelClient.exchange); raises on an error answer or no answer.
Exchange = Callable[[str, Message], Awaitable[None]]


@dataclass(frozen=True)
class LifecycleSettings:
    # Clock seconds between two looks at every channel. Well inside the
    # close margin, so a close is tried several times before the lock time.
    every_s: float = 300.0
    # As payee: close a channel with less than this left to receive (the
    # payer is about to move to a new one; closing frees the funds now).
    full_below_sat: int = 1_000
    # As payee: watch each incoming channel's funding until it has this many
    # confirmations; while the chain does not show it at all, refuse updates.
    confirmations: int = 1


@dataclass
class TickReport:
    """What one tick did, channel ids per step (tests, the console, logs)."""

    closed: list[bytes] = field(default_factory=list)  # as payee: close broadcast (or re-broadcast)
    notified: list[bytes] = field(default_factory=list)  # as payee: payer acknowledged the close
    refunded: list[bytes] = field(default_factory=list)  # as payer: refund broadcast
    close_seen: list[bytes] = field(default_factory=list)  # as payer: the chain's close taken
    funded: list[bytes] = field(default_factory=list)  # as payer: funding (re)broadcast or open finished
    funding_lost: list[bytes] = field(default_factory=list)  # as payee: funding not on the chain
    failed: list[bytes] = field(default_factory=list)  # a step failed; retried next tick


class ChannelLifecycle:
    def __init__(self, node: ChannelNode, exchange: Exchange, settings: LifecycleSettings | None = None) -> None:
        self.node = node
        self.exchange = exchange
        self.settings = settings or LifecycleSettings()
        # Closes and refunds seen with enough confirmations: not checked
        # again this run (a restart checks each once more).
        self._confirmed: set[bytes] = set()
        self._missed: set[bytes] = set()  # as payee: lock time passed while open (logged once)
        self.ticks = 0

    async def tick(self) -> TickReport:
        """Take the next step on every channel that needs one."""
        report = TickReport()
        self.ticks += 1
        for cid, e in list(self.node.channels.items()):
            try:
                if e.role == "payee":
                    await self._payee_step(cid, e, report)
                else:
                    await self._payer_step(cid, e, report)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the peer, the chain, the disk: try again next tick
                report.failed.append(cid)
                log.warning("channel %s (%s, %s): next step failed, retried in %.0f s: %s", cid.hex()[:16],
                            e.role, e.channel.state.value, self.settings.every_s, err)
        return report

    async def _payee_step(self, cid: bytes, e: Entry, report: TickReport) -> None:
        ch = e.channel
        assert isinstance(ch, PayeeChannel)
        chain = self.node.chain
        now = self.node.now()
        if ch.state == State.OPEN and now >= ch.terms.refund_locktime:
            # Too late: the payer's refund may be valid, and the channel
            # refuses to close (see PayeeChannel.close). Said once.
            if cid not in self._missed and ch.latest is not None:
                self._missed.add(cid)
                log.error("channel %s: the refund lock time passed before it was closed; %d sat received on it "
                          "are at the payer's mercy", cid.hex()[:16], ch.received)
            return
        if ch.state == State.OPEN and not ch.funding_confirmed:
            assert ch.funding is not None
            shown = await call(chain, chain.confirmations, txid_hex_of(ch.funding))
            if self.node.watch_funding(cid, self.settings.confirmations, shown) < 0:
                report.funding_lost.append(cid)
                log.error("channel %s: its funding tx is not on the chain; updates refused until it is",
                          cid.hex()[:16])
        due = ch.latest is not None and (ch.must_close(now) or ch.is_full(self.settings.full_below_sat))
        if (ch.state == State.OPEN and due) or ch.state == State.CLOSING:
            await self.node.close_async(cid)
            report.closed.append(cid)
        elif ch.state == State.CLOSED and cid not in self._confirmed and ch.closing_tx is not None:
            await self._watch(cid, ch.closing_tx, report.closed)
        if ch.state == State.CLOSED and not ch.payer_notified and e.peer_uri:
            await self.exchange(e.peer_uri, await self.node.close_async(cid))
            if ch.payer_notified:
                report.notified.append(cid)

    async def _watch(self, cid: bytes, tx: Tx, rebroadcast: list[bytes]) -> None:
        """A final transaction (close, refund) is watched until mined deep
        enough, and put back (noted in `rebroadcast`) if the chain lost it."""
        chain = self.node.chain
        n = await call(chain, chain.confirmations, txid_hex(tx))
        if n < 0:
            await call(chain, chain.broadcast, tx)
            rebroadcast.append(cid)
        elif n >= self.settings.confirmations:
            self._confirmed.add(cid)

    async def _payer_step(self, cid: bytes, e: Entry, report: TickReport) -> None:
        ch = e.channel
        assert isinstance(ch, PayerChannel)
        chain = self.node.chain
        if ch.state == State.REFUNDED:
            if cid not in self._confirmed and ch.refund is not None:
                await self._watch(cid, ch.refund, report.refunded)
            return
        if ch.state not in (State.OPEN, State.REFUND_SIGNED) or ch.funding is None:
            return
        past_lock = self.node.now() > ch.terms.refund_locktime
        if ch.state == State.REFUND_SIGNED and not past_lock:
            # The open stopped after the refund was signed (the funding
            # broadcast failed, `funded` or its answer was lost): finish it.
            msg = await self.node.funded_request_async(cid)
            if msg is not None and e.peer_uri:
                await self.exchange(e.peer_uri, msg)
            report.funded.append(cid)
            return
        if await call(chain, chain.get_output, ch.funding) is None:
            if await call(chain, chain.confirmations, txid_hex_of(ch.funding)) < 0:
                # The funding is not on the chain (dropped from mempools, or
                # never sent before a crash): put it back, or the payee
                # refuses our updates. Our refund stays valid for it.
                if ch.funding_tx is not None and not past_lock:
                    await call(chain, chain.broadcast, ch.funding_tx)
                    report.funded.append(cid)
                return
            # Spent, and not by anything we know: the payee closed. Its
            # answer to `close` carries the closing tx, taken once the
            # chain shows it (ChannelNode.rpc_closed).
            if e.peer_uri:
                await self.exchange(e.peer_uri, self.node.close_request(cid))
            if ch.state == State.CLOSED:
                report.close_seen.append(cid)
            return
        if past_lock:
            await self.node.refund_async(cid)
            report.refunded.append(cid)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every `every_s` clock seconds until `stop` is set."""
        real = getattr(self.node.clock, "real_seconds", None)
        wait = real(self.settings.every_s) if real else self.settings.every_s
        while not stop.is_set():
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # tick guards each channel; this is a bug, keep the appliance going
                log.exception("channel lifecycle tick failed")
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except asyncio.TimeoutError:
                pass
