"""The metering exchange: what a household tells its zone about its energy,
and what it reads of everyone else's.

Settlement is only as good as the figures every coordinator settles on, so
they travel as signed overlay records and each coordinator reads the same
ones:

    mg/metering/<zone>/<start>   each household's export and import at its
                                 connection for the interval (JSON, Wh)
    mg/live/<zone>/<start>       the same, so far, during the interval: what
                                 streamed payments follow (with CoAP served
                                 from our coordinator, trading/live.py)
    mg/round/<zone>/<start>      with `[market] round_records`: the meter
                                 total and the orders for two intervals on
                                 in one record (market/rounds.py), then
                                 each settler's word on what it settled on

Only members' records count (`is_member`); a malformed record is logged
and skipped, never fatal. The keys and formats are in overlay/SPEC.md.
This module moves figures; what they are worth is settlement's business
(market/settlement.py), and when they move is the trading conductor's
(trading/service.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable

from ..market import rounds
from ..market.settings import MarketSettings
from ..market.settlement import Metered, SettlementError
from ..store.readings import ReadingStore
from .live import LiveFetcher, LiveRecords
from .metering import interval_energy

log = logging.getLogger("microgrid.trading")

METERING_PREFIX = "mg/metering/"
LIVE_PREFIX = "mg/live/"  # each trader's running export and import during an interval


class MeteringExchange:
    """Publishes this household's figures and collects the zone's.

    `planned_orders(start)` gives the orders our market round for `start`
    placed (none when that round is not ours, e.g. after a restart)."""

    def __init__(self, *, overlay: Any, public_hex: str, market: MarketSettings, store: ReadingStore,
                 device_ids: Callable[[], list[str]], record_ttl_s: int,
                 planned_orders: Callable[[int], list[Any]],
                 is_member: Callable[[bytes], bool] | None = None, live_store_s: int | None = None,
                 live_fetcher: LiveFetcher | None = None) -> None:
        self.overlay = overlay
        self.public_hex = public_hex
        self.market = market
        self.store = store
        self.device_ids = device_ids
        self.record_ttl_s = record_ttl_s
        self.planned_orders = planned_orders
        self.is_member = is_member
        # How long storing nodes keep each live version (a couple of polls):
        # only the newest few travel with a read by name.
        self.live_store_s = live_store_s
        # With a CoAP context (the appliance): live records go between the
        # counterparties (trading/live.py), ours served from `live`; without
        # one (tools, tests), over the overlay.
        self.live_fetcher = live_fetcher
        self.live = LiveRecords()

    def metering_key(self, start: int) -> str:
        return f"{METERING_PREFIX}{self.market.zone}/{start}"

    def live_key(self, start: int) -> str:
        return f"{LIVE_PREFIX}{self.market.zone}/{start}"

    def metered(self, start: int) -> Metered:
        """Our connection's net figures for the interval at `start`."""
        e = interval_energy(self.store, self.device_ids(), start, start + self.market.interval_s)
        return Metered(bytes.fromhex(self.public_hex), e.net_export_wh, e.net_import_wh)

    # -- the interval's totals ------------------------------------------------

    async def publish_metering(self, start: int) -> Metered:
        m = self.metered(start)
        # What we publish is what the interval is settled on: a reading
        # arriving from now on dated into it counts in a later interval.
        self.store.close_metering(start + self.market.interval_s)
        if self.market.round_records:
            await self._publish_round(start, m)
        else:
            await self._publish_wh(self.metering_key(start), export_wh=m.export_wh, import_wh=m.import_wh)
        return m

    async def collect_metering(self, start: int) -> list[Metered]:
        if self.market.round_records:
            totals = await self._collect_round_meters(start)
        else:
            totals = {p: (v[0], v[1]) for p, v in (await self._collect_wh(
                self.metering_key(start), "export_wh", "import_wh")).items()}
        out = []
        for publisher, (export_wh, import_wh) in totals.items():
            try:
                out.append(Metered(publisher, export_wh, import_wh))
            except SettlementError as e:  # a negative figure
                log.warning("ignored metering record from %s: %s", publisher.hex()[:16], e)
        return out

    # -- during the interval ----------------------------------------------------

    async def publish_live(self, start: int, export_wh: int, import_wh: int) -> None:
        body = json.dumps({"export_wh": export_wh, "import_wh": import_wh}).encode()
        if self.live_fetcher is not None:
            self.live.put(start, self.overlay.sign(self.live_key(start), body, self.record_ttl_s))
            return
        store_s = None if self.live_store_s is None else min(self.live_store_s, self.record_ttl_s)
        await self.overlay.put(self.live_key(start), body, self.record_ttl_s, store_s=store_s)

    async def collect_live(self, start: int, publishers: Iterable[bytes] | None = None) -> dict[bytes, tuple[int, int]]:
        """Each trader's running (export, import) Wh for the interval, as
        last published; with `publishers`, theirs only, each asked for by
        name (delivery.live_needed: a trader's counterparties)."""
        if self.live_fetcher is not None and publishers is not None:
            wanted = [bytes(p) for p in publishers if self.is_member is None or self.is_member(bytes(p))]
            return await self.live_fetcher.fetch_all(wanted, start, self.live_key(start))
        got = await self._collect_wh(self.live_key(start), "export_wh", "import_wh", publishers=publishers)
        return {p: (v[0], v[1]) for p, v in got.items()}

    # -- record formats ---------------------------------------------------------

    async def _publish_wh(self, key: str, **wh: int) -> None:
        await self.overlay.put(key, json.dumps(wh).encode(), self.record_ttl_s)

    async def _collect_wh(self, key: str, *fields: str,
                          publishers: Iterable[bytes] | None = None) -> dict[bytes, tuple[int, ...]]:
        """Each publisher's integer `fields` under `key` (the overlay gives
        the newest record per publisher; with `publishers`, theirs only);
        malformed records are logged and skipped."""
        out: dict[bytes, tuple[int, ...]] = {}
        recs = await (self.overlay.get(key) if publishers is None else self.overlay.get(key, publishers=publishers))
        for rec in recs:
            if self.is_member is not None and not self.is_member(rec.publisher):
                continue  # not a member of the zone: its figures count for nothing
            try:
                d = json.loads(rec.body)
                out[rec.publisher] = tuple(int(d[f]) for f in fields)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("ignored record under %s from %s: %s", key, rec.publisher.hex()[:16], e)
        return out

    async def _publish_round(self, start: int, m: Metered) -> None:
        """Round records (market/rounds.py): our meter total for `start` and
        our orders for the interval whose book reads this round, in one
        record."""
        step = self.market.interval_s
        orders: list[Any] = list(self.planned_orders(start + 2 * step)[:rounds.MAX_ORDERS])
        if not orders:
            # After a restart the round that planned them may be gone while
            # our record for this round already carries them (published at
            # order time): a record without them would supersede it and
            # take them out of the book.
            me = bytes.fromhex(self.public_hex)
            ours = rounds.households(await self.overlay.get(rounds.round_key(self.market.zone, start),
                                                            publishers=[me]), start, step).get(me)
            orders = list(ours.orders) if ours is not None else []
        rec = rounds.make_round(start, step, (m.export_wh, m.import_wh), orders)
        await rounds.publish_round(self.overlay, self.market.zone, rec, self.record_ttl_s)

    async def _collect_round_meters(self, start: int) -> dict[bytes, tuple[int, int]]:
        """Every member's meter total from the round's records; then our
        word on what we settle on (rounds.SettledRound), which peers compare
        and which ends the round's listens still held by the engine."""
        step = self.market.interval_s
        got = rounds.meters_from(await rounds.read_round(self.overlay, self.market.zone, start, step,
                                                         self.is_member))
        await rounds.publish_settled(self.overlay, self.market.zone, rounds.SettledRound(
            start, step, len(got), rounds.meters_hash(got)), self.record_ttl_s)
        return got
