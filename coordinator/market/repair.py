"""Repairing a book the zone's coordinators disagree on.

Every coordinator collects its zone's orders from the overlay until the
gate and clears what it holds. A late order (published just before the
gate, reaching some coordinators after it) or a lost one leaves them
holding different books, clearing different trades, and settling nothing
in common. Reporting that is not enough; this module repairs it, with a
rule every coordinator applies to the same facts and so reaches the same
book (clearing is deterministic: the same book gives the same result).

1. At the gate each coordinator publishes its result (book.py): its
   current book hash and the orders it held at the gate, as 8-byte hash
   prefixes. The held list never changes afterwards; the hash changes
   when the book is repaired.
2. The agreed book is the set of orders that a quorum held at the gate:
   more than half of the coordinators whose results are seen, us
   included. An order only a minority held is dropped, by those who held
   it too; an order a quorum held is fetched from the overlay by those
   who lacked it, checked as if it had come before the gate (signed by
   its owner, this zone and interval, created before the gate, alive
   after it: orders.OrderFilter) and added. An order that reached nobody
   by the gate is in nobody's list, and one coordinator alone cannot
   vouch a late order into the book.
3. Results are read again every `poll_s` until the grace period ends,
   merged into one view (a lossy read forgets nothing, a newer record of
   a peer replaces its older one), the agreed book recomputed, and our
   result republished whenever our book changed.
4. Verdict at the end: our book is agreed when more than half of the
   coordinators seen hold its hash. A coordinator that is not (no quorum,
   or an agreed order it could not fetch) does not settle the interval,
   and says why (`Repair.reason`).

A unanimous comparison with at least one peer ends the repair at once:
adding a later peer's list cannot change a book that a quorum of two or
more already holds. Limits: results of books above book.MAX_LISTED_ORDERS
orders carry no list and do not vote on orders (when ours is one, only
the verdict applies: no repair). The quorum counts signing keys: the zone's membership decides whose results
count (the overlay's accept filter).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

from ..clock import Clock, sleep_until
from . import book as bk
from .clearing import ClearedInterval, Comparison, clear_interval
from .orders import OrderFilter, SignedOrder, dedupe, order_hash
from .settings import MarketSettings

log = logging.getLogger("microgrid.market.repair")

Sleep = Callable[[float], Awaitable[Any]]


def quorum(n: int) -> int:
    """More than half of n."""
    return n // 2 + 1


def agreed_prefixes(held: Mapping[str, Sequence[bytes]]) -> frozenset[bytes]:
    """The orders (hash prefixes) held at the gate by a quorum of the
    coordinators in `held` (peer -> its list)."""
    counts = Counter(p for listed in held.values() for p in set(listed))
    need = quorum(len(held))
    return frozenset(p for p, c in counts.items() if c >= need)


def quorum_hash(hashes: Iterable[bytes]) -> bytes | None:
    """The book hash more than half of `hashes` hold, if any."""
    hs = list(hashes)
    if not hs:
        return None
    h, c = Counter(hs).most_common(1)[0]
    return h if c >= quorum(len(hs)) else None


def book_of(target: frozenset[bytes], orders: Iterable[SignedOrder]) -> list[SignedOrder]:
    """The orders whose prefixes are in `target`, deduplicated as a book is."""
    return dedupe(o for o in orders if o.hash[:bk.PREFIX_BYTES] in target)


@dataclass
class Repair:
    """What repairing one interval's book did, and the verdict."""

    cleared: ClearedInterval
    book: list[SignedOrder]
    comparison: Comparison
    peers: int = 1  # coordinators whose results were seen, us included
    agreeing: int = 1  # of them holding our final hash, us included
    initial_disagreements: int = 0
    fetched: int = 0  # orders added from the overlay
    dropped: int = 0  # orders we held that no quorum held
    rounds: int = 0
    missing: tuple[bytes, ...] = ()  # agreed orders (prefixes) we could not fetch
    listed: bool = True  # every result seen carried its gate list
    held: tuple[bytes, ...] = ()  # the orders (prefixes) we held at the gate, as published
    history: list[bytes] = field(default_factory=list)  # our book hashes, in order

    @property
    def agreed(self) -> bool:
        return 2 * self.agreeing > self.peers

    @property
    def reason(self) -> str:
        """Why the interval is not settled here ('' when agreed)."""
        if self.agreed:
            return ""
        why = f"no quorum holds our book: {self.agreeing} of {self.peers} coordinators"
        if self.missing:
            why += f"; {len(self.missing)} agreed orders could not be fetched"
        if not self.listed:
            why += f"; a book above {bk.MAX_LISTED_ORDERS} orders carries no list to repair from"
        return why


class BookRepair:
    """Repairs one coordinator's book for one interval (see the module
    docstring). The clock and sleep are passed in, as everywhere."""

    def __init__(self, overlay: bk.Overlay, peer_id: str, settings: MarketSettings, clock: Clock,
                 sleep: Sleep = asyncio.sleep, poll_s: float = 5.0,
                 is_member: Callable[[bytes], bool] | None = None) -> None:
        self.overlay = overlay
        self.is_member = is_member  # a quorum's list does not make a stranger's order count
        self.me = bk.our_peer_id(overlay, peer_id)
        self.peer_id = peer_id
        self.settings = settings
        self.clock = clock
        self._sleep = sleep
        self.poll_s = poll_s

    def grace_ends_at(self, interval_start: int) -> float:
        """Halfway between the gate and the interval start: repaired books
        are cleared before the interval begins."""
        return interval_start - self.settings.gate_lead_s / 2

    async def run(self, book: list[SignedOrder], cleared: ClearedInterval, first: Comparison) -> Repair:
        s = self.settings
        start = cleared.interval_start
        held = bk.prefixes_of(so.hash for so in book)  # ours at the gate: what we published
        known: dict[bytes, SignedOrder] = {so.hash: so for so in book}
        out = Repair(cleared, list(book), first, initial_disagreements=len(first.disagree), history=[cleared.hash],
                     held=held)
        view: dict[str, bk.PublishedResult] = {}
        until = self.grace_ends_at(start)
        while True:
            out.rounds += 1
            try:
                await bk.read_results(self.overlay, s.zone, start, s.interval_s, view)
            except Exception as e:  # a failed read: the next round reads again
                log.warning("reading results for %s/%d failed: %s", s.zone, start, e)
            others = {p: r for p, r in view.items() if p != self.me}
            # Peers whose results carry no list (a big book, or a peer that
            # will not say) do not vote on orders, so they cannot stop a repair.
            lists = {p: r.prefixes for p, r in others.items() if r.prefixes is not None}
            out.listed = len(lists) == len(others) and len(held) <= bk.MAX_LISTED_ORDERS
            if lists and len(held) <= bk.MAX_LISTED_ORDERS:
                target = agreed_prefixes({**lists, self.me: held})
                await self._move_to(target, known, out)
            mine = view.get(self.me)
            if mine is None or mine.hash != out.cleared.hash:
                # Peers must see our list and hash: publish again what a
                # lost put (or a read that missed it) may have kept from them.
                await bk.publish_result(self.overlay, self.peer_id, out.cleared, held)
            out.peers = len(others) + 1
            out.agreeing = 1 + sum(r.hash == out.cleared.hash for r in others.values())
            if (others and out.agreeing == out.peers) or self.clock.now() >= until:
                break
            await sleep_until(self.clock, min(self.clock.now() + self.poll_s, until), self._sleep)
        # Logged once, with what each side lacked at the gate.
        out.comparison = bk.compare_results(out.cleared, self.me,
                                            {p: r for p, r in view.items() if p != self.me})
        if out.history[-1] != out.history[0] or out.initial_disagreements:
            log.info("book %s/%d repaired in %d rounds: %d fetched, %d dropped, %s of %d agree (%s)", s.zone,
                     start, out.rounds, out.fetched, out.dropped, out.agreeing, out.peers,
                     "agreed" if out.agreed else out.reason)
        return out

    async def _move_to(self, target: frozenset[bytes], known: dict[bytes, SignedOrder], out: Repair) -> None:
        """Make our book the agreed one: fetch the agreed orders we lack,
        drop the ones no quorum held, and clear again."""
        s = self.settings
        start = out.cleared.interval_start
        lacking = target - {h[:bk.PREFIX_BYTES] for h in known}
        if lacking:
            await self._fetch(lacking, known, start)
        book = book_of(target, known.values())
        out.missing = tuple(sorted(target - {so.hash[:bk.PREFIX_BYTES] for so in book}))
        if [so.hash for so in book] == [so.hash for so in out.book]:
            return
        before, after = {so.hash for so in out.book}, {so.hash for so in book}
        out.fetched += len(after - before)
        out.dropped += len(before - after)
        out.book = book
        out.cleared = clear_interval(book, s.zone, start, s.interval_s, s.rules())
        out.history.append(out.cleared.hash)  # published by the caller's loop

    async def _fetch(self, lacking: frozenset[bytes], known: dict[bytes, SignedOrder], start: int) -> None:
        """The orders with these prefixes, from the overlay, judged as if
        received just before the gate (a quorum held them there)."""
        s = self.settings
        flt = OrderFilter(s.zone, start, s.interval_s, s.gate_lead_s)
        try:
            values = await self.overlay.get(bk.book_key(s.zone, start, s.interval_s, s.round_records))
        except Exception as e:  # the next round fetches again
            log.warning("fetching orders for %s/%d failed: %s", s.zone, start, e)
            return
        for v in values:
            try:
                datas = bk.order_bytes(v, s.round_records)
            except TypeError:
                continue
            for data in datas:
                # Only what the quorum listed is decoded: nothing else under
                # the key gets into the book after the gate.
                if order_hash(data)[:bk.PREFIX_BYTES] not in lacking:
                    continue
                so = flt.offer(data, flt.gate_closes_at - 1)
                if so is not None and (self.is_member is None or self.is_member(so.owner)):
                    known.setdefault(so.hash, so)
