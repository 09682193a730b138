"""Trading for one household: market rounds, metering, settlement, payments.

The decisions live in market/ (orders, clearing, settlement) and channels/
(the payment channel state machines); this module runs them in time:

    each interval S          MarketService places orders from the forecast,
                             collects the zone's book, clears it
    S + I + settle_delay     publish our connection's metering for [S, S+I)
                             on the overlay (signed, like every record)
    S + I + 2 settle_delay   collect every participant's metering, settle the
                             interval (the same result on every coordinator),
                             and pay what we owe each seller through a
                             channel to it, one update per delivered
                             increment (default 10 Wh)

A seller's coordinator address is found in the overlay directory
(overlay/directory.py), which every coordinator re-publishes each round.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import aiocoap
from bitcoinx import PrivateKey

from ..channels.protocol import ChannelNode
from ..channels.transport import ChannelClient
from ..clock import Clock, sleep_until
from ..market.clearing import ClearedInterval
from ..market.pricing import Battery, Forecast
from ..market.service import MarketService
from ..market.settings import MarketSettings
from ..overlay.directory import Directory
from ..market.settlement import P2P, IntervalSettlement, Metered, check_energy_balance, settle_interval
from ..store.readings import ReadingStore
from .credit import SellerCredit
from .metering import interval_energy

log = logging.getLogger("microgrid.trading")

METERING_PREFIX = "mg/metering/"


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


@dataclass
class TradingStats:
    trades: int = 0  # trades in cleared books this coordinator was part of
    traded_wh: int = 0
    payment_updates: int = 0
    paid_sat: int = 0
    settled: dict[int, IntervalSettlement] = field(default_factory=dict)
    cleared: dict[int, ClearedInterval] = field(default_factory=dict)
    channels_opened: int = 0
    errors: int = 0
    # (time, payee public key hex, cumulative sat acknowledged on that channel)
    payment_log: list[tuple[float, str, int]] = field(default_factory=list)


def split_increments(wh: int, sats: int, increment_wh: int) -> list[int]:
    """Sats per delivered increment: ceil(wh / increment) updates whose
    amounts add up to exactly `sats` (earlier ones take the remainder)."""
    if sats <= 0 or wh <= 0:
        return []
    n = max(1, -(-wh // max(increment_wh, 1)))
    n = min(n, sats)  # never an update of 0 sat
    base, rem = divmod(sats, n)
    return [base + (1 if i < rem else 0) for i in range(n)]


class TradingService:
    def __init__(self, *, key: PrivateKey, overlay: Any, market: MarketSettings, clock: Clock,
                 store: ReadingStore, device_ids: Callable[[], list[str]], node: ChannelNode,
                 context: aiocoap.Context, own_uri: str, settings: TradingSettings | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep, poll_s: float = 0.05,
                 export_relay: Any = None) -> None:
        self.key = key
        self.public_hex = key.public_key.to_hex(compressed=True)
        self.overlay = overlay
        self.market_settings = market
        self.clock = clock
        self.store = store
        self.device_ids = device_ids
        self.node = node
        self.client = ChannelClient(node, context)
        self.own_uri = own_uri
        self.settings = settings or TradingSettings()
        self._sleep = sleep
        self.market = MarketService(overlay, key, market, clock, self.forecast, sleep=sleep, poll_s=poll_s,
                                    result_wait_s=market.gate_lead_s / 4)
        self.directory = Directory(overlay, {"coap": own_uri, "zone": market.zone, "capabilities": "market,channels"},
                                   ttl_s=self.settings.record_ttl_s,
                                   republish_s=self.settings.record_ttl_s / 4)
        self.stats = TradingStats()
        # Called with each interval's settlement (MQTT, reports).
        self.on_settled: Callable[[IntervalSettlement], None] | None = None
        self.channel_to: dict[str, bytes] = {}  # payee public key hex -> channel id
        self._pay_lock = asyncio.Lock()
        # As a seller: what each buyer owes by the settlements, and has paid.
        self.credit = SellerCredit(self.settings.credit_sat, export_relay)
        node.payment_listeners.append(self._on_payment)

    # -- forecasting and metering -----------------------------------------------

    def forecast(self, interval_start: int) -> tuple[Forecast, Battery | None]:
        """Persistence: the last complete interval before the order time."""
        step = self.market_settings.interval_s
        last_end = int(self.clock.now()) // step * step
        e = interval_energy(self.store, self.device_ids(), last_end - step, last_end)
        return Forecast(interval_start, e.export_wh, e.import_wh), None

    def metered(self, start: int) -> Metered:
        e = interval_energy(self.store, self.device_ids(), start, start + self.market_settings.interval_s)
        return Metered(bytes.fromhex(self.public_hex), e.net_export_wh, e.net_import_wh)

    # -- overlay records --------------------------------------------------------

    def _metering_key(self, start: int) -> str:
        return f"{METERING_PREFIX}{self.market_settings.zone}/{start}"

    async def publish_directory(self) -> None:
        await self.directory.publish()

    async def lookup_uri(self, public_hex: str) -> str | None:
        contact = await self.directory.lookup(public_hex)
        return None if contact is None else contact.get("coap")

    async def publish_metering(self, start: int) -> Metered:
        m = self.metered(start)
        body = json.dumps({"export_wh": m.export_wh, "import_wh": m.import_wh}).encode()
        await self.overlay.put(self._metering_key(start), body, self.settings.record_ttl_s)
        return m

    async def collect_metering(self, start: int) -> list[Metered]:
        out: dict[bytes, Metered] = {}
        for rec in await self.overlay.get(self._metering_key(start)):
            try:
                d = json.loads(rec.body)
                out[rec.publisher] = Metered(rec.publisher, int(d["export_wh"]), int(d["import_wh"]))
            except (ValueError, KeyError, TypeError) as e:
                log.warning("ignored metering record from %s: %s", rec.publisher.hex()[:16], e)
        return list(out.values())

    # -- payments ----------------------------------------------------------------

    async def _channel(self, payee_hex: str) -> bytes:
        cid = self.channel_to.get(payee_hex)
        if cid is not None:
            return cid
        uri = await self.lookup_uri(payee_hex)
        if uri is None:
            raise LookupError(f"no directory entry for {payee_hex[:16]}")
        cid = await self.client.open_channel(uri, self.settings.channel_capacity_sat, self.settings.channel_lock_s,
                                             bytes.fromhex(payee_hex))
        self.channel_to[payee_hex] = cid
        self.stats.channels_opened += 1
        return cid

    # -- as a seller: is every buyer paying? ------------------------------------

    def _on_payment(self, channel_id: bytes, delta: int, update: Any) -> None:
        entry = self.node.channels.get(channel_id)
        if entry is not None:
            self.credit.paid(entry.peer.hex(), delta)

    def expect_payments(self, settlement: IntervalSettlement) -> None:
        for p in settlement.payments:
            if p.kind == P2P and p.payee == self.public_hex and p.sats > 0:
                self.credit.owe(p.payer, p.sats)

    async def pay(self, settlement: IntervalSettlement) -> None:
        async with self._pay_lock:
            for p in settlement.payments:
                if p.kind != P2P or p.payer != self.public_hex or p.sats <= 0:
                    continue
                cid = await self._channel(p.payee)
                acked = 0
                for amount in split_increments(p.wh, p.sats, self.settings.increment_wh):
                    acked = await self.client.pay(cid, amount)
                    self.stats.payment_updates += 1
                    self.stats.paid_sat += amount
                self.stats.payment_log.append((self.clock.now(), p.payee, acked))

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
        metered = await self.collect_metering(start)
        s = settle_interval(rnd.cleared, metered, self.market_settings.tariff(), self.market_settings.operator)
        check_energy_balance(s)
        self.stats.settled[start] = s
        if self.on_settled is not None:
            self.on_settled(s)
        self.expect_payments(s)
        await self.pay(s)
        return s

    async def _round(self, start: int) -> None:
        try:
            # Re-announce our address every round: peers that joined after
            # us, or lost the record with a node, find it again.
            await self.publish_directory()
            rnd = await self.market.run_interval(start)
            if rnd.cleared is not None:
                self.stats.cleared[start] = rnd.cleared
                mine = [t for t in rnd.cleared.trades if self.public_hex in (t.buyer.hex(), t.seller.hex())]
                self.stats.trades += len(mine)
                self.stats.traded_wh += sum(t.wh for t in mine)
            await self.settle_interval(start)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats.errors += 1
            log.exception("trading round %d failed", start)

    async def run(self, stop: asyncio.Event) -> None:
        """A round (market, then settlement and payment) for every interval
        until `stop`; rounds overlap. The market's scheduler runs them."""
        await self.publish_directory()
        await self.market.run(stop, round_fn=self._round)

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
