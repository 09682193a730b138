"""The coordinator's side of firmware updates, as a conductor: releases
held on disk (store.py), announced in the overlay and fetched from peers
in verified chunks (peers.py, transport.py), offered to its meters in the
household's window (offer.py).

Uses only the overlay's public interface (put, listen). Fetches run one
chunk at a time under a byte-rate limit, so they never crowd out readings
or trading; a chunk is kept only once its hash matched, a peer that served
a bad one is not asked again, and a restart resumes with the chunks still
missing (the store is the state).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import aiocoap
import aiocoap.resource as resource

from microgrid.shared import release
from microgrid.shared.release import Release

from ..overlay.interface import BaseOverlay, ListenHandle
from ..overlay.records import SignedRecord
from . import transport
from .rollout import ReportError, Rollout, parse_report
from .peers import ANNOUNCE_KEY, AnnouncementError, FetchPlan, RateLimit, announcement, parse_announcement
from .settings import UpdatesSettings, in_window, parse_window
from .store import ReleaseStore

log = logging.getLogger("microgrid.updates")

CHUNK_TIMEOUT_S = 10.0
MAX_LEARNING = 8  # manifests fetched at once from announcements
MAX_UNTRUSTED = 1024
IDLE_S = 0.05


def local_minute_of_day() -> int:
    t = time.localtime()
    return t.tm_hour * 60 + t.tm_min


class UpdateService:
    def __init__(self, settings: UpdatesSettings, store: ReleaseStore, overlay: BaseOverlay | None,
                 endpoint: str, clock: Callable[[], float] = time.monotonic,
                 minute_of_day: Callable[[], int] = local_minute_of_day,
                 device_key: Callable[[str], bytes | None] | None = None, history: Any = None) -> None:
        self.settings = settings
        self.store = store
        self.overlay = overlay
        self.endpoint = endpoint
        self.clock = clock
        self.minute_of_day = minute_of_day
        self.window = parse_window(settings.window)
        self.rate = RateLimit(settings.rate_bytes_s)
        self.device_key = device_key or (lambda _d: None)
        self.rollout = Rollout(settings.canary, history=history)
        self.rollout.restore()
        # Called with a meter's view (rollout.meter_view) when it changes:
        # the MQTT publisher's update entity (app.py wires it).
        self.on_meter: Callable[[dict[str, Any]], None] | None = None
        self.plans: dict[str, FetchPlan] = {}
        self.untrusted: set[str] = set()  # release ids whose manifest failed verification
        self._learning: set[str] = set()  # manifests being fetched (one fetch per release id)
        self._learners: set[asyncio.Task[None]] = set()
        self.site: resource.Site | None = None
        self.ctx: aiocoap.Context | None = None
        self._listen: ListenHandle | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()
        self.counts = {"chunks_fetched": 0, "bad_chunks": 0, "fetch_errors": 0, "bytes_served": 0, "offers": 0}

    # -- wiring ------------------------------------------------------------

    def attach(self, site: resource.Site) -> None:
        """Add the fw/ resources to the coordinator's CoAP site."""
        self.site = site
        site.add_resource(["fw", "manifest"], transport.ManifestResource(self._offered_manifest))
        site.add_resource(["fw", "report"], transport.ReportResource(self._report))
        for rel in self.store.releases.values():
            self._serve(rel)

    def _serve(self, rel: Release) -> None:
        if self.site is not None:
            transport.add_release(self.site, self.store, rel, self._served)

    def _served(self, n: int) -> None:
        self.counts["bytes_served"] += n

    async def start(self, ctx: aiocoap.Context, overlay: BaseOverlay | None = None) -> None:
        """`ctx`: a context for fetching from peers (the server's will do)."""
        self.ctx = ctx
        if overlay is not None:
            self.overlay = overlay
        for rel in self.store.releases.values():
            if not self.store.complete(rel):
                self.plans.setdefault(rel.release_id(), FetchPlan(rel, self.store.missing(rel)))
        if self.overlay is not None:
            self._listen = self.overlay.listen(ANNOUNCE_KEY, self._on_announcement)
        self._tasks = [asyncio.create_task(self._fetch_loop()), asyncio.create_task(self._announce_loop())]

    async def stop(self) -> None:
        if self._listen is not None:
            self._listen.cancel()
        for t in [*self._tasks, *self._learners]:
            t.cancel()
        for t in [*self._tasks, *self._learners]:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []

    # -- releases ----------------------------------------------------------

    async def add_local(self, signed: bytes, image: bytes) -> Release:
        """A release made here (`microgrid release`): kept, served, announced."""
        rel = self.store.add_release(signed, image)
        self._serve(rel)
        await self._announce(rel)
        return rel

    async def _announce(self, rel: Release) -> None:
        if self.overlay is None or not self.store.complete(rel):
            return
        try:
            await self.overlay.put(ANNOUNCE_KEY, announcement(rel, self.endpoint), self.settings.announce_ttl_s,
                                   slot=rel.release_id()[:16])
        except Exception as e:  # the overlay may be down: announced again later
            log.warning("release %s not announced: %s", rel.version, e)

    async def _announce_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.announce_ttl_s / 2)
            for rel in list(self.store.releases.values()):
                await self._announce(rel)

    def _on_announcement(self, rec: SignedRecord) -> None:
        try:
            a = parse_announcement(rec.body)
        except AnnouncementError as e:
            log.debug("announcement from %s dropped: %s", rec.publisher_id, e)
            return
        if a.endpoint == self.endpoint or a.release_id in self.untrusted:
            return
        plan = self.plans.get(a.release_id)
        known = self.store.releases.get(a.release_id)
        if known is not None and self.store.complete(known):
            return
        if plan is not None:
            plan.add_peer(a.endpoint)
            self._wake.set()
            return
        if a.release_id in self._learning or len(self._learning) >= MAX_LEARNING:
            return  # already asked (or a flood of announcements): the next announcement retries
        self._learning.add(a.release_id)
        task = asyncio.create_task(self._learn(a.release_id, a.endpoint))
        self._learners.add(task)
        task.add_done_callback(self._learners.discard)

    async def _learn(self, release_id: str, endpoint: str) -> None:
        """Fetch and verify an announced release's manifest, then plan."""
        try:
            await self._learn_one(release_id, endpoint)
        finally:
            self._learning.discard(release_id)

    async def _learn_one(self, release_id: str, endpoint: str) -> None:
        if self.ctx is None or release_id in self.plans:
            return
        try:
            signed = await asyncio.wait_for(transport.get_manifest(self.ctx, endpoint, release_id), CHUNK_TIMEOUT_S)
            checked = release.verify(signed, self.store.keys)
        except release.ReleaseError as e:
            if len(self.untrusted) >= MAX_UNTRUSTED:
                self.untrusted.clear()  # forged ids cannot grow it without bound
            self.untrusted.add(release_id)
            log.warning("release %s announced by %s refused: %s", release_id[:16], endpoint, e)
            return
        except (Exception, asyncio.TimeoutError) as e:
            self.counts["fetch_errors"] += 1
            log.info("manifest %s from %s not fetched: %s", release_id[:16], endpoint, e)
            return
        if checked.release_id() != release_id:
            log.warning("peer %s announced %s but served the manifest of %s", endpoint, release_id[:16],
                        checked.release_id()[:16])
            return
        try:
            table = await asyncio.wait_for(transport.get_table(self.ctx, endpoint, release_id), CHUNK_TIMEOUT_S)
            rel = self.store.add_manifest(signed, table)
        except release.ReleaseError as e:
            # A genuine release, a bad copy of its table: the peer is at
            # fault, not the release; the next announcement tries again.
            self.counts["bad_chunks"] += 1
            log.warning("peer %s served a chunk table of %s that fails its hash: %s", endpoint, release_id[:16], e)
            return
        except (Exception, asyncio.TimeoutError) as e:
            self.counts["fetch_errors"] += 1
            log.info("chunk table %s from %s not fetched: %s", release_id[:16], endpoint, e)
            return
        self._serve(rel)
        plan = self.plans.setdefault(release_id, FetchPlan(rel, self.store.missing(rel)))
        plan.add_peer(endpoint)
        self._wake.set()

    async def _fetch_loop(self) -> None:
        while True:
            did = False
            for rid, plan in list(self.plans.items()):
                if plan.done:
                    del self.plans[rid]
                    log.info("release %s complete: %d chunks", plan.rel.version, plan.rel.count)
                    await self._announce(plan.rel)
                    continue
                step = plan.next(self.clock())
                if step is None:
                    continue
                did = True
                await self._fetch_one(plan, *step)
            if not did:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass

    async def _fetch_one(self, plan: FetchPlan, i: int, endpoint: str) -> None:
        assert self.ctx is not None
        n = plan.rel.chunk_len(i)
        while (delay := self.rate.wait(n, self.clock())) > 0:
            await asyncio.sleep(delay)
        try:
            data = await asyncio.wait_for(transport.get_chunk(self.ctx, endpoint, plan.rel, i), CHUNK_TIMEOUT_S)
        except (Exception, asyncio.TimeoutError) as e:
            self.counts["fetch_errors"] += 1
            plan.failed(endpoint, self.clock())
            log.debug("chunk %d of %s from %s failed: %s", i, plan.rel.version, endpoint, e)
            return
        ok = self.store.put_chunk(plan.rel, i, data)
        plan.got(i, endpoint, ok)
        if ok:
            self.counts["chunks_fetched"] += 1
        else:
            self.counts["bad_chunks"] += 1
            log.warning("peer %s served a bad chunk %d of %s: not asked again", endpoint, i, plan.rel.version)

    # -- meters --------------------------------------------------------------

    def offered(self) -> Release | None:
        """The release offered to meters now: the newest complete one for
        their board, inside the window."""
        if not in_window(self.window, self.minute_of_day()):
            return None
        return self.store.newest(self.settings.board)

    def _offered_manifest(self) -> bytes | None:
        rel = self.store.newest(self.settings.board)
        return rel.signed if rel is not None else None

    def offer_suffix(self, device: str | None = None) -> str:
        """What a 2.01 to `device`'s reading carries: " fw=VERSION" or
        nothing (outside the window, or not its turn in a staged rollout)."""
        rel = self.offered()
        if rel is None or not self.rollout.may_offer(device, rel.version):
            return ""
        self.counts["offers"] += 1
        if device and device not in self.rollout.pending:
            self.rollout.offered_to(device, rel.version)
            self._changed(device)
        return f" fw={rel.version}"

    def _changed(self, device: str) -> None:
        if self.on_meter is not None:
            try:
                self.on_meter(self.meter_view(device))
            except Exception as e:  # publishing must never stop an update
                log.warning("update status of %s not published: %s", device, e)

    def meter_view(self, device: str) -> dict[str, Any]:
        newest = self.store.newest(self.settings.board)
        return self.rollout.meter_view(device, newest.version if newest is not None else None)

    def meters_view(self, devices: list[str] | None = None) -> list[dict[str, Any]]:
        """Every meter's firmware (`devices`: these; else those heard of):
        what the household web app and GET /api/updates show."""
        ids = sorted(set(devices or []) | set(self.rollout.meters) | set(self.rollout.pending))
        return [self.meter_view(d) for d in ids]

    def _report(self, data: bytes) -> str | None:
        """A meter's signed update outcome; None when recorded, else why not."""
        try:
            r = parse_report(data, self.device_key)
        except ReportError as e:
            log.warning("update report refused: %s", e)
            return str(e)
        try:
            self.rollout.record(r, time.time())
        except Exception as e:  # the database: the meter hears 4.00 and sends it again later
            log.error("update report of %s not recorded: %s", r.device, e)
            return f"not recorded: {e}"
        self._changed(r.device)
        if r.ok:
            log.info("meter %s runs %s", r.device, r.version)
        else:
            log.warning("meter %s rolled back from %s to %s: %s", r.device, r.tried, r.version, r.why)
        return None

    def status(self) -> dict[str, Any]:
        held = []
        for rel in self.store.releases.values():
            missing = len(self.store.missing(rel))
            held.append({"version": rel.version, "board": rel.board, "id": rel.release_id()[:16],
                         "chunks": f"{rel.count - missing}/{rel.count}"})
        fetching = {p.rel.version: {"missing": len(p.missing), "peers": len(p.peers), "avoided": p.avoided()}
                    for p in self.plans.values()}
        off = self.offered()
        return {"held": held, "fetching": fetching, "offered": off.version if off else None,
                "window": self.settings.window or "any time", "rollout": self.rollout.status(), **self.counts}


def mount(config: Any, site: resource.Site, readings: resource.Resource, endpoint: str,
          device_key: Callable[[str], bytes | None] | None = None, db: Any = None,
          devices: Callable[[], list[str]] | None = None) -> UpdateService:
    """The service for a coordinator's config: fw/ resources on its site,
    its readings' 2.01s carrying the offer (offer.py), the rollout kept in
    `db` (history.py) and shown at GET /api/updates (credentials as the
    rest of /api). Started later, with the CoAP context and the overlay
    (UpdateService.start)."""
    from ..ingest.api import ReadOnly
    from .history import UpdateHistory
    from .offer import OfferingReadings

    s = config.updates
    store = ReleaseStore(config.resolve(s.folder), s.keys())
    service = UpdateService(s, store, None, endpoint, device_key=device_key,
                            history=UpdateHistory(db) if db is not None else None)
    service.attach(site)
    site.add_resource(["readings"], OfferingReadings(readings, service.offer_suffix))
    site.add_resource(["api", "updates"], ReadOnly(
        lambda _q: {"meters": service.meters_view(devices() if devices else None), **service.status()},
        "microgrid.updates"))
    return service
