"""Wiring only: config -> services -> run until asked to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any, Callable

import aiocoap
import aiocoap.resource as resource

from .clock import Clock, SystemClock
from .config import Config
from .console import Console
from .console_server import ConsoleServer
from .logs import LOG_BUFFER
from .ingest.dedup import bound_duplicate_cache
from .ingest.devices import devices_resource
from .ingest.readings import ReadingIngest
from .ingest.resources import HealthResource, ReadingsResource
from .store.database import open_database
from .store.readings import ReadingStore

log = logging.getLogger("microgrid.coordinator")


class Coordinator:
    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.db = open_database(config.store.path)
        self.store = ReadingStore(self.db)
        self.ingest = ReadingIngest(self.store, max_future_s=config.ingest.max_future_s, clock=self.clock.now)
        self.started = time.time()
        self.context: aiocoap.Context | None = None
        self.log_buffer = LOG_BUFFER
        # Optional subsystems the console shows; None until configured.
        self.relays: dict[str, Any] | None = None
        self.console_peers: Callable[[], list[dict[str, Any]]] | None = None
        self.console_orders: Callable[[], list[dict[str, Any]]] | None = None
        self.console_channels: Callable[[], list[dict[str, Any]]] | None = None
        self.console_server = ConsoleServer(Console(self), config.console_socket())

    def status(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "uptime_s": round(time.time() - self.started, 1),
            "devices": len(self.store.devices()),
            "readings": self.store.count(),
            "ingest": dict(self.ingest.counts),
        }

    def site(self) -> resource.Site:
        site = resource.Site()
        site.add_resource([".well-known", "core"], resource.WKCResource(site.get_resources_as_linkheader))
        site.add_resource(["readings"], ReadingsResource(self.ingest))
        site.add_resource(["health"], HealthResource(self.status))
        site.add_resource(["devices"], devices_resource(self.store, self.config.ingest.installer_token))
        return site

    async def start(self) -> None:
        c = self.config.coap
        self.context = await aiocoap.Context.create_server_context(self.site(), bind=(c.host, c.port))
        self.dedup_caches = bound_duplicate_cache(self.context, self.config.ingest.dedup_entries)
        await self.console_server.start()
        log.info("coordinator listening on coap://%s:%d (database %s)", c.host, c.port, self.config.store.path)

    async def stop(self) -> None:
        await self.console_server.stop()
        if self.context is not None:
            await self.context.shutdown()
            self.context = None
        self.db.close()
        log.info("coordinator stopped; %d readings stored", self.ingest.counts["stored"])


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set); shut down cleanly:
    every reading acknowledged so far is already committed."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    coordinator = Coordinator(config)
    await coordinator.start()
    print(f"READY coap://{config.coap.host}:{config.coap.port}/readings", flush=True)
    try:
        await stop.wait()
    finally:
        await coordinator.stop()
