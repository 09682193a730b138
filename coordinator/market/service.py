"""One coordinator's part in the market, interval after interval: the only
module here that waits. Wiring for app.py; the decisions are in the pure
modules.

For each interval (start S, settings from [market]):
    S - order_lead_s   plan this household's orders from its forecast and
                       battery (pricing.py), sign, publish (book.py)
    until S - gate_lead_s   collect the zone's book from the overlay
    at the gate        clear (clearing.py), publish our book hash, wait
                       result_wait_s, compare with the peers' hashes
    until S - gate_lead_s/2   if they differ: repair (repair.py), to the
                       book a quorum held at the gate, or say why not
    after S + interval settle with the meter readings (settlement.py):
                       `settle(round, readings)`, called by whoever holds
                       the readings (the store)
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from bitcoinx import PrivateKey

from ..clock import Clock, sleep_until, wait_or_stop
from . import book as bk, rounds
from .clearing import ClearedInterval, Comparison, clear_interval
from .orders import SignedOrder
from .pricing import Battery, Forecast, plan_interval, sign_plans
from .repair import BookRepair, Repair
from .settings import MarketSettings
from .settlement import IntervalSettlement, Metered, SettlementError, settle_interval

log = logging.getLogger("microgrid.market.service")

# Given an interval start: the household's forecast and battery state.
Forecaster = Callable[[int], tuple[Forecast, Battery | None]]
Sleep = Callable[[float], Awaitable[Any]]


@dataclass
class MarketRound:
    interval_start: int
    own_orders: list[SignedOrder] = field(default_factory=list)
    book: list[SignedOrder] = field(default_factory=list)
    cleared: ClearedInterval | None = None
    comparison: Comparison | None = None
    rejected: dict[str, int] = field(default_factory=dict)
    repair: Repair | None = None  # when the first comparison was not unanimous

    @property
    def agreed(self) -> bool:
        """A quorum of the zone's coordinators holds our book (or nobody
        disagreed): the interval may be settled on it."""
        return self.repair is None or self.repair.agreed

    @property
    def unsettled_reason(self) -> str:
        return "" if self.repair is None else self.repair.reason


class MarketService:
    def __init__(self, overlay: bk.Overlay, key: PrivateKey, settings: MarketSettings, clock: Clock,
                 forecaster: Forecaster, sleep: Sleep = asyncio.sleep, poll_s: float = 5.0,
                 result_wait_s: float = 10.0, peer_id: str | None = None, repair: bool = True,
                 is_member: Callable[[bytes], bool] | None = None) -> None:
        self.overlay = overlay
        self.is_member = is_member  # zone membership: only members' orders enter the book
        self.key = key
        self.settings = settings
        self.clock = clock
        self.forecaster = forecaster
        self._sleep = sleep
        self.poll_s = poll_s
        self.result_wait_s = result_wait_s
        self.peer_id = peer_id or getattr(overlay, "publisher_id", None) or key.public_key.to_hex()
        self.rounds: dict[int, MarketRound] = {}
        # Repair reads the results again this often until its grace period ends.
        self.repair = BookRepair(overlay, self.peer_id, settings, clock, sleep, max(poll_s, result_wait_s / 4),
                                 is_member) \
            if repair else None

    def next_interval(self, now: float | None = None) -> int:
        """The first interval whose orders can still be placed in time."""
        now = self.clock.now() if now is None else now
        step = self.settings.interval_s
        earliest = now + self.settings.order_lead_s
        return int(math.ceil(earliest / step) * step)

    def in_flight(self, now: float | None = None) -> list[int]:
        """Intervals whose orders were due before `now` and whose gate has
        not closed: after a restart, their rounds run without placing
        orders again (the ones placed before are in the overlay)."""
        now = self.clock.now() if now is None else now
        step = self.settings.interval_s
        first = (int(now) + self.settings.gate_lead_s) // step * step + step
        return list(range(first, self.next_interval(now), step))

    async def _sleep_until(self, t: float) -> None:
        await sleep_until(self.clock, t, self._sleep)

    async def place_orders(self, interval_start: int) -> list[SignedOrder]:
        s = self.settings
        forecast, battery = self.forecaster(interval_start)
        plans = plan_interval(s.policy(), forecast, battery, s.utc_offset_s)
        now = self.clock.now()
        # Nonces from the clock in milliseconds: new ones after a restart too.
        orders = sign_plans(plans, self.key, s.zone, interval_start, int(now), interval_start + s.interval_s,
                            first_nonce=int(now * 1000) * 4, interval_s=s.interval_s)
        if s.round_records:
            # Published in our round record for the round two intervals
            # before, with its meter total (trading, rounds.py), when we run
            # that round; when we do not (we started after it), now, alone.
            carrier = rounds.orders_round(interval_start, s.interval_s)
            if carrier not in self.rounds and orders:
                rec = rounds.make_round(carrier, s.interval_s, None, orders[:rounds.MAX_ORDERS])
                ttl = int(interval_start + s.interval_s - now)
                if not await rounds.publish_round(self.overlay, s.zone, rec, ttl):  # type: ignore[arg-type]
                    log.warning("round record with our orders for %s/%d not confirmed by the overlay", s.zone,
                                interval_start)
            return orders
        for so in orders:
            if not await bk.publish_order(self.overlay, so, now):
                log.warning("order %s for %s/%d not confirmed by the overlay", so.hash_hex[:16], s.zone,
                            interval_start)
        return orders

    async def run_interval(self, interval_start: int, place: bool = True) -> MarketRound:
        """Place (unless not `place`), collect, clear and compare one
        interval's book."""
        s = self.settings
        rnd = self.rounds.setdefault(interval_start, MarketRound(interval_start))
        await self._sleep_until(interval_start - s.order_lead_s)
        collector = bk.BookCollector(self.overlay, s.zone, interval_start, self.clock, s.interval_s, s.gate_lead_s,
                                     is_member=self.is_member, round_records=s.round_records)
        if not s.round_records:  # with round records, collect() listens once the round's records can exist
            collector.start()
        if place:
            rnd.own_orders = await self.place_orders(interval_start)
        rnd.book = await collector.collect(self.poll_s, self._sleep)
        if not place:  # ours from before a restart, as the book shows them
            me = self.key.public_key.to_bytes(compressed=True)
            rnd.own_orders = [so for so in rnd.book if so.owner == me]
        rnd.rejected = {k: v for k, v in collector.filter.rejected.items() if v}
        rnd.cleared = clear_interval(rnd.book, s.zone, interval_start, s.interval_s, s.rules())
        c = rnd.cleared
        log.info("cleared %s/%d: %d orders, %d Wh at %s sat/kWh, book %s", s.zone, interval_start,
                 len(rnd.book), c.volume_wh, c.price_sat_per_kwh, c.hash.hex()[:16])
        await bk.publish_result(self.overlay, self.peer_id, c)
        await self._sleep_until(self.clock.now() + self.result_wait_s)
        rnd.comparison = await bk.compare_with_peers(self.overlay, self.peer_id, c)
        if self.repair is not None and not (rnd.comparison.agree and rnd.comparison.unanimous):
            r = await self.repair.run(rnd.book, c, rnd.comparison)
            rnd.repair, rnd.book, rnd.cleared, rnd.comparison = r, r.book, r.cleared, r.comparison
        return rnd

    def settle(self, interval_start: int, readings: Iterable[Metered]) -> IntervalSettlement:
        rnd = self.rounds.get(interval_start)
        if rnd is None or rnd.cleared is None:
            raise KeyError(f"interval {interval_start}: not cleared here (cleared: {sorted(self.rounds)})")
        if not rnd.agreed:
            raise SettlementError(f"interval {interval_start}: not settled, {rnd.unsettled_reason}")
        return settle_interval(rnd.cleared, readings, self.settings.tariff(), self.settings.operator)

    async def _guarded(self, interval_start: int) -> None:
        try:
            await self.run_interval(interval_start)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("market round %s/%d failed", self.settings.zone, interval_start)

    async def run(self, stop: asyncio.Event, keep: int = 96,
                  round_fn: Callable[[int], Awaitable[None]] | None = None) -> None:
        """Every interval until `stop` is set, each round in its own task
        started at its order time (rounds overlap when order_lead_s exceeds
        interval_s). Keeps the last `keep` rounds for settlement. A caller
        that does more per round (settling, paying) passes `round_fn`,
        which is then run instead of the market round alone."""
        start = self.next_interval()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                if await wait_or_stop(self._sleep_until(start - self.settings.order_lead_s), stop):
                    break
                task = asyncio.ensure_future(round_fn(start) if round_fn is not None else self._guarded(start))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                for old in sorted(self.rounds)[:-keep]:
                    del self.rounds[old]
                start += self.settings.interval_s
        finally:
            for t in list(tasks):
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
