"""Trading for one household: market rounds, metering, settlement, payments.

The decisions live in market/ (orders, clearing, settlement) and channels/
(the payment channel state machines); this module runs them in time:

    each interval S          MarketService places orders from the forecast,
                             collects the zone's book, clears it
    during [S, S + I)        every `stream_poll_s`: publish our export and
                             import so far (signed) on the overlay; as a
                             buyer, pay each seller for what our meters show
                             received and its record shows sent, one update
                             per whole increment (trading/delivery.py); as a
                             seller, work out from the same records what
                             each buyer's stream should have reached, and
                             open our export relay on one too far behind
    S + I + settle_delay     publish our connection's metering for [S, S+I)
                             on the overlay (signed, like every record;
                             trading/exchange.py moves the figures)
    S + I + 2 settle_delay   collect every participant's metering, settle the
                             interval (the same result on every coordinator),
                             and pay each seller what the settlement says we
                             owe beyond what we streamed; what we streamed
                             beyond it (the seller fell short) counts
                             against what we owe it next

A seller's coordinator address is found in the overlay directory
(overlay/directory.py), which every coordinator re-publishes each round.

This module is the conductor: each phase's work is a module of its own
(exchange.py the figures on the overlay, paying.py the buyer's payments,
payer.py and rollover.py the channels they go through, credit.py the
seller's side, delivery.py what is due as energy arrives).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import aiocoap
from bitcoinx import PrivateKey

from ..channels.protocol import ChannelNode
from ..channels.transport import ChannelClient
from ..clock import Clock, sleep_until
from ..market.clearing import ClearedInterval, ClearingError, clear_interval
from ..market.orders import OrderError, decode_order
from ..market.pricing import Battery, Forecast
from ..market.service import MarketRound, MarketService
from ..market.settings import MarketSettings
from ..overlay.directory import Directory
from ..market.settlement import (P2P, IntervalSettlement, Metered, check_energy_balance,
                                 settle_interval)
from ..store.books import BookStore, StoredBook
from ..store.dues import Due, DuesStore
from ..store.readings import ReadingStore
from .credit import SellerCredit
from .delivery import SellerAccounts, expected_streams, live_needed
from .exchange import MeteringExchange
from .live import LiveFetcher
from .metering import interval_energy
from .payer import ChannelPayer
from .paying import BuyerPayments
from .rollover import RolloverPolicy

log = logging.getLogger("microgrid.trading")



@dataclass
class TradingSettings:
    increment_wh: int = 10  # one channel update per this much delivered energy
    channel_capacity_sat: int = 2_000_000
    channel_lock_s: int = 7 * 86400
    settle_delay_s: int = 120  # simulated or real seconds after an interval's end
    record_ttl_s: int = 6 * 3600
    # As a seller: how far one buyer may fall behind what the settled
    # intervals say it owes us before our export relay opens (sat).
    credit_sat: int = 500
    # As a buyer: how often to pay for energy received during an interval
    # (0: pay only after the interval's settlement).
    stream_poll_s: float = 60.0
    # Rollover (trading/rollover.py): open the next channel to a seller this
    # long before the current one's close margin begins, or when a payment
    # would leave less than reserve_sat on it.
    renew_before_s: int = 86_400
    reserve_sat: int = 1_000


@dataclass
class TradingStats:
    trades: int = 0  # trades in cleared books this coordinator was part of
    traded_wh: int = 0
    payment_updates: int = 0
    paid_sat: int = 0  # signed to sellers (what they can claim), acknowledged or not
    streamed_sat: int = 0  # of paid_sat, paid during intervals as energy arrived
    settled: dict[int, IntervalSettlement] = field(default_factory=dict)
    # Intervals cleared here but not settled, and why: no quorum of the
    # zone's coordinators agreed on our book (market/repair.py).
    unsettled: dict[int, str] = field(default_factory=dict)
    cleared: dict[int, ClearedInterval] = field(default_factory=dict)
    channels_opened: int = 0
    rollover_s: list[float] = field(default_factory=list)  # clock seconds each open took
    refused_rollovers: int = 0  # a payee refused more on a channel; the payment went to the next
    errors: int = 0
    # (time, payee public key hex, cumulative sat acknowledged on that channel)
    payment_log: list[tuple[float, str, int]] = field(default_factory=list)
    # Intervals `resume` picked up at start (after a restart: what was in flight).
    picked_up: list[int] = field(default_factory=list)


class TradingService:
    def __init__(self, *, key: PrivateKey, overlay: Any, market: MarketSettings, clock: Clock,
                 store: ReadingStore, device_ids: Callable[[], list[str]], node: ChannelNode,
                 context: aiocoap.Context, own_uri: str, settings: TradingSettings | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep, poll_s: float = 0.05,
                 export_relay: Any = None, is_member: Callable[[bytes], bool] | None = None) -> None:
        self.key = key
        self.public_hex = key.public_key.to_hex(compressed=True)
        self.overlay = overlay
        self.market_settings = market
        self.clock = clock
        self.store = store
        self.device_ids = device_ids
        self.node = node
        self.own_uri = own_uri
        self.settings = settings or TradingSettings()
        if market.round_records and self.settings.settle_delay_s >= market.interval_s - market.gate_lead_s:
            # Our round record (meter total, and orders for two intervals
            # on) goes out settle_delay_s after an interval ends; the book
            # it feeds closes gate_lead_s before the next interval ends.
            raise ValueError(f"settle_delay_s={self.settings.settle_delay_s}: with [market] round_records, expected "
                             f"less than interval_s - gate_lead_s = {market.interval_s - market.gate_lead_s}")
        self._sleep = sleep
        # Zone membership: orders, metering and live totals of members only.
        self.is_member = is_member
        self.market = MarketService(overlay, key, market, clock, self.forecast, sleep=sleep, poll_s=poll_s,
                                    result_wait_s=market.gate_lead_s / 4, is_member=is_member)
        self.directory = Directory(overlay, {"coap": own_uri, "zone": market.zone, "capabilities": "market,channels"},
                                   ttl_s=self.settings.record_ttl_s,
                                   republish_s=self.settings.record_ttl_s / 4)
        # Our figures out, the zone's in (trading/exchange.py).
        self.exchange = MeteringExchange(
            overlay=overlay, public_hex=self.public_hex, market=market, store=store, device_ids=device_ids,
            record_ttl_s=self.settings.record_ttl_s, is_member=is_member,
            planned_orders=lambda start: list(r.own_orders) if (r := self.market.rounds.get(start)) else [],
            # Two polls: the version read is never the only one kept.
            live_store_s=max(1, int(2 * self.settings.stream_poll_s)) if self.settings.stream_poll_s > 0 else None,
            live_fetcher=None if context is None else LiveFetcher(context, self.lookup_uri, clock.now))
        self.stats = TradingStats()
        # Called with each interval's settlement (MQTT, reports).
        self.on_settled: Callable[[IntervalSettlement], None] | None = None
        self._resumed: set[asyncio.Task[None]] = set()
        # As a buyer: which channel pays each seller, rolling over to the next.
        self.payer = ChannelPayer(node, ChannelClient(node, context), clock,
                                  RolloverPolicy(self.settings.renew_before_s, self.settings.reserve_sat),
                                  self.settings.channel_capacity_sat, self.settings.channel_lock_s,
                                  self.lookup_uri, self.stats, self._spawn)
        # The books, rebuilt from what is durable: the settled dues (our
        # database) and every signed update (the channel store), so a
        # restart neither pays a seller twice nor forgets who is behind.
        self.dues = DuesStore(store.db)
        self.books = BookStore(store.db)  # cleared books, to settle them after a restart
        # As a seller: what each buyer owes by the settlements, and has paid.
        self.credit = SellerCredit(self.settings.credit_sat, export_relay)
        self.credit.owed = self.dues.owed_to(self.public_hex)
        self.credit.received = node.signed_by_peer("payee")
        self.credit.enforce()
        # As a buyer: what we owe each seller by the settlements and have
        # signed to it (streamed or settled), and per interval what was
        # streamed (seller hex -> Wh, sat).
        self.paying = BuyerPayments(node, self.payer, clock, self.stats, self.public_hex, self.settings.increment_wh,
                                    SellerAccounts(owed=self.dues.owed_by(self.public_hex),
                                                   signed=node.signed_by_peer("payer")))
        self.accounts = self.paying.accounts
        self.streamed = self.paying.streamed
        self._streams: dict[int, asyncio.Task[None]] = {}
        node.payment_listeners.append(self._on_payment)

    # -- forecasting and metering -----------------------------------------------

    def forecast(self, interval_start: int) -> tuple[Forecast, Battery | None]:
        """Persistence: the last complete interval before the order time."""
        step = self.market_settings.interval_s
        last_end = int(self.clock.now()) // step * step
        e = interval_energy(self.store, self.device_ids(), last_end - step, last_end)
        return Forecast(interval_start, e.export_wh, e.import_wh), None

    def metered(self, start: int) -> Metered:
        return self.exchange.metered(start)

    async def publish_metering(self, start: int) -> Metered:
        return await self.exchange.publish_metering(start)

    async def collect_metering(self, start: int) -> list[Metered]:
        return await self.exchange.collect_metering(start)

    async def publish_live(self, start: int, export_wh: int, import_wh: int) -> None:
        await self.exchange.publish_live(start, export_wh, import_wh)

    async def collect_live(self, start: int, publishers: Iterable[bytes] | None = None) -> dict[bytes, tuple[int, int]]:
        return await self.exchange.collect_live(start, publishers)

    # -- overlay directory -------------------------------------------------------

    async def publish_directory(self) -> None:
        await self.directory.publish()

    async def lookup_uri(self, public_hex: str) -> str | None:
        contact = await self.directory.lookup(public_hex)
        return None if contact is None else contact.get("coap")

    # -- payments ----------------------------------------------------------------

    @property
    def client(self) -> ChannelClient:
        return self.payer.client

    @client.setter
    def client(self, client: ChannelClient) -> None:
        """Tests and tools may carry the channel messages another way."""
        self.payer.client = client

    @property
    def channel_to(self) -> dict[str, bytes]:
        return self.payer.channel_to

    async def _channel(self, payee_hex: str, amount: int = 0) -> bytes:
        return await self.payer.channel(payee_hex, amount)

    # -- as a seller: is every buyer paying? ------------------------------------

    def _on_payment(self, channel_id: bytes, delta: int, update: Any) -> None:
        entry = self.node.channels.get(channel_id)
        if entry is not None:
            self.credit.paid(entry.peer.hex(), delta)

    def record_dues(self, settlement: IntervalSettlement) -> list[Due]:
        """Keep what this settlement says we owe and are owed; returns the
        dues not recorded before (an interval counts once)."""
        mine = [Due(p.payer, p.payee, p.wh, p.sats) for p in settlement.payments
                if p.kind == P2P and p.sats > 0 and self.public_hex in (p.payer, p.payee) and p.payer != p.payee]
        return self.dues.record(settlement.interval_start, mine)

    def expect_payments(self, interval_start: int, dues: list[Due]) -> None:
        """As a seller: the settlement's dues replace what the buyers'
        streams were expected to reach in that interval."""
        owed: dict[str, int] = {}
        for d in dues:
            if d.payee == self.public_hex:
                owed[d.payer] = owed.get(d.payer, 0) + d.sats
        self.credit.settled(interval_start, owed)

    async def stream_interval(self, cleared: ClearedInterval) -> None:
        """Pay as energy arrives during the interval. Publish our export
        and import so far; as a buyer, pay for what our meters show
        received and the seller's record shows sent; as a seller, expect
        each buyer's stream to keep up. A failed update is retried at the
        next poll, and settlement pays whatever the stream did not."""
        me = bytes.fromhex(self.public_hex)
        buying = any(t.buyer == me for t in cleared.trades)
        selling = any(t.seller == me for t in cleared.trades)
        poll = self.settings.stream_poll_s
        if not (buying or selling) or poll <= 0:
            return
        start, end = cleared.interval_start, cleared.interval_start + cleared.interval_s
        # Our counterparties' live records only (the trades are fixed for
        # the interval); ours is what we publish each poll.
        needed = sorted(live_needed(cleared.trades, me))
        t = float(start)
        while t < end:
            # A poll that took longer than `poll` (a slow overlay, the demo's
            # fast clock) is not made up for: the next looks at now.
            t = min(max(t + poll, self.clock.now()), end)
            await self._sleep_until(t)
            energy = interval_energy(self.store, self.device_ids(), start, t)
            try:
                await self.publish_live(start, energy.net_export_wh, energy.net_import_wh)
            except Exception as e:  # payments then wait for the settlement
                log.warning("publishing our energy so far for interval %d failed: %s", start, e)
            try:
                live = await self.collect_live(start, needed) if needed else {}
            except Exception as e:
                log.warning("reading the traders' energy so far for interval %d failed: %s", start, e)
                continue
            live[me] = (energy.net_export_wh, energy.net_import_wh)
            if buying:
                await self.paying.stream(cleared, live, energy.net_import_wh)
            if selling:
                for buyer, sats in expected_streams(cleared.trades, me, live, self.settings.increment_wh).items():
                    self.credit.expect_streamed(start, buyer.hex(), sats)

    def channel_summary(self) -> dict[str, Any]:
        """Our channels and both sides' books, as MQTT publishes them after
        each settlement: what we have signed to and owe each seller, what
        each buyer is behind, and the export relay."""
        relay = self.credit.relay
        return {
            "open": len(self.node.open_channels()),
            "channels": self.node.rows(),
            "paying": {s: {"signed_sat": self.accounts.signed.get(s, 0), "owed_sat": self.accounts.owed.get(s, 0),
                           "ahead_sat": self.accounts.prepaid(s), "unpaid_sat": self.accounts.unpaid(s)}
                       for s in self.accounts.sellers()},
            "buyers_behind_sat": self.credit.behind(),
            "export_relay": None if relay is None else str(relay.state),
            "export_relay_cuts": self.credit.disconnects,
        }

    # -- the schedule -------------------------------------------------------------

    async def _sleep_until(self, t: float) -> None:
        await sleep_until(self.clock, t, self._sleep)

    async def settle_interval(self, start: int) -> IntervalSettlement | None:
        step = self.market_settings.interval_s
        delay = self.settings.settle_delay_s
        await self._sleep_until(start + step + delay)
        await self.publish_metering(start)
        await self._sleep_until(start + step + 2 * delay)
        rnd = self.market.rounds.get(start)
        if rnd is None or rnd.cleared is None:
            return None
        if not rnd.agreed:
            # Our metering is published all the same: the coordinators that
            # agree settle with it.
            self.stats.unsettled[start] = rnd.unsettled_reason
            log.warning("interval %d not settled here: %s", start, rnd.unsettled_reason)
            return None
        stream = self._streams.pop(start, None)
        if stream is not None:
            # It ends with the interval's last poll (polls never queue up
            # behind a slow overlay), so waiting for it is short.
            try:
                await stream
            except Exception:
                self.stats.errors += 1
                log.exception("streaming payments for interval %d failed; settlement pays the rest", start)
        metered = await self.collect_metering(start)
        s = settle_interval(rnd.cleared, metered, self.market_settings.tariff(), self.market_settings.operator)
        check_energy_balance(s)
        self.stats.settled[start] = s
        if self.on_settled is not None:
            self.on_settled(s)
        dues = self.record_dues(s)
        self.books.mark_settled(self.market_settings.zone, start)
        self.expect_payments(start, dues)
        await self.paying.settle(start, dues)
        return s

    def _keep_book(self, rnd: MarketRound) -> None:
        c = rnd.cleared
        if c is not None:
            self.books.save(StoredBook(c.zone, c.interval_start, c.interval_s, c.hash, [so.encoded for so in rnd.book]))

    async def _round(self, start: int, place: bool = True) -> None:
        try:
            # Re-announce our address every round: peers that joined after
            # us, or lost the record with a node, find it again.
            await self.publish_directory()
            rnd = await self.market.run_interval(start, place=place)
            if rnd.cleared is not None and not rnd.agreed:
                self.stats.cleared[start] = rnd.cleared  # shown as a disagreement; neither streamed nor settled
                self.stats.unsettled[start] = rnd.unsettled_reason
            elif rnd.cleared is not None:
                self.stats.cleared[start] = rnd.cleared
                mine = [t for t in rnd.cleared.trades if self.public_hex in (t.buyer.hex(), t.seller.hex())]
                if mine:
                    self._keep_book(rnd)
                self.stats.trades += len(mine)
                self.stats.traded_wh += sum(t.wh for t in mine)
                self._streams[start] = asyncio.ensure_future(self.stream_interval(rnd.cleared))
            await self.settle_interval(start)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats.errors += 1
            log.exception("trading round %d failed", start)
        finally:
            self._end_interval(start)

    def resume(self) -> list[int]:
        """After a restart, pick up what was in flight: settle (and pay or
        expect payment for) the intervals cleared here and not settled,
        from their kept books, as far back as the peers' metering records
        live; and run the rounds whose orders were already placed, without
        placing them again. Returns the intervals picked up."""
        s = self.market_settings
        picked = []
        for book in self.books.unsettled(s.zone, int(self.clock.now()) - self.settings.record_ttl_s):
            start = book.interval_start
            try:
                orders = [decode_order(o) for o in book.orders]
                cleared = clear_interval(orders, book.zone, start, book.interval_s, s.rules())
            except (OrderError, ClearingError) as e:
                log.error("the kept book of interval %d cannot be cleared again (%s): not settled here", start, e)
                continue
            if cleared.hash != book.book_hash:
                log.error("the kept book of interval %d clears to %s, not %s (market rules changed?): not settled "
                          "here", start, cleared.hash.hex()[:16], book.book_hash.hex()[:16])
                continue
            mine = [so for so in orders if so.owner.hex() == self.public_hex]
            self.market.rounds[start] = MarketRound(start, own_orders=mine, book=orders, cleared=cleared)
            self.stats.cleared[start] = cleared
            if self.clock.now() < start + book.interval_s:
                # Still running: stream on from what the channel journals
                # say was streamed for it before the restart.
                self.streamed[start] = self.paying.journal_streamed(start)
                self._streams[start] = asyncio.ensure_future(self.stream_interval(cleared))
            self._spawn(self._settle_resumed(start))
            picked.append(start)
        for start in self.market.in_flight():
            if start not in self.market.rounds:
                self._spawn(self._round(start, place=False))
                picked.append(start)
        if picked:
            log.info("picked up intervals %s: cleared here and not settled, or with orders already due", picked)
        self.stats.picked_up = picked
        return picked

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._resumed.add(task)
        task.add_done_callback(self._resumed.discard)

    async def _settle_resumed(self, start: int) -> None:
        try:
            await self.settle_interval(start)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats.errors += 1
            log.exception("settling interval %d after a restart failed", start)
        finally:
            self._end_interval(start)

    def _end_interval(self, start: int) -> None:
        """An interval is done here (settled, failed or stopped): drop what
        was kept for it while it ran."""
        self.streamed.pop(start, None)
        self.credit.forget(start)  # settled by now, or never will be here
        stream = self._streams.pop(start, None)
        if stream is not None and not stream.done():
            stream.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        """A round (market, then settlement and payment) for every interval
        until `stop`; rounds overlap. The market's scheduler runs them;
        what a restart interrupted is picked up first."""
        await self.publish_directory()
        self.resume()
        try:
            await self.market.run(stop, round_fn=self._round)
        finally:
            for task in list(self._resumed):
                task.cancel()
            await asyncio.gather(*self._resumed, return_exceptions=True)

    async def close_incoming(self) -> list[bytes]:
        """As payee: close every channel paying us (broadcast the latest
        update); returns the closed channel ids."""
        closed = []
        for cid in self.node.open_channels("payee"):
            try:
                await self.client.close_as_payee(cid)
                closed.append(cid)
            except Exception:
                self.stats.errors += 1
                log.exception("closing channel %s failed", cid.hex()[:16])
        return closed
