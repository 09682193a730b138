"""The coordinator as an OpenADR 2.0b VEN (openleadr's OpenADRClient):
registers with the energy company's VTN, polls it at the frequency the VTN
asks for, and hands every event to events.PriceEvents, answering optIn or
optOut as that decides.

openleadr was chosen because it is the maintained Python OpenADR 2.0b
implementation (both the VEN and the VTN side, XML schema validation,
signatures, TLS), so the tests run the energy company's side from the same
library. It runs its polling on an APScheduler inside our event loop.

The VTN unreachable at start (openleadr then gives up without a
registration id): registration is tried again every `retry_s`, so a
coordinator that starts before the VTN still joins it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from .events import PriceEvents
from .settings import OpenAdrSettings

log = logging.getLogger("microgrid.openadr")


class Ven:
    def __init__(self, settings: OpenAdrSettings, events: PriceEvents, now: Callable[[], float]) -> None:
        from openleadr import OpenADRClient  # imported only when [openadr] is on (lxml, signxml)

        self.settings = settings
        self.events = events
        self.now = now
        s = settings
        self.client: Any = OpenADRClient(
            ven_name=s.ven_name, vtn_url=s.vtn_url, ven_id=s.ven_id or None, cert=s.cert or None,
            key=s.key or None, ca_file=s.ca_file or None, vtn_fingerprint=s.vtn_fingerprint or None,
            show_fingerprint=False, disable_signature=not s.cert)
        self.client.add_handler("on_event", self._on_event)
        self.client.add_handler("on_update_event", self._on_event)
        self.received = asyncio.Event()  # set at every event handled (tests and the console wait on it)
        self.task: asyncio.Task[None] | None = None
        self.attempts = 0  # registrations tried

    async def _on_event(self, event: dict[str, Any]) -> str:
        answer = self.events.receive(event, int(self.now()))
        event_id = event.get("event_descriptor", {}).get("event_id")
        if answer == "optOut":
            log.warning("OpenADR event %s refused: %s", event_id, self.events.refused.get(str(event_id), "?"))
        else:
            log.info("OpenADR event %s: %d price windows in force", event_id, len(self.events.windows))
        self.received.set()
        return answer

    @property
    def registered(self) -> bool:
        return self.client.registration_id is not None

    async def _run(self) -> None:
        while True:
            self.attempts += 1
            try:
                await self.client.run()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("OpenADR VTN %s: %s", self.settings.vtn_url, e)
            if self.registered:
                return  # openleadr's scheduler polls from here on
            # openleadr closed its HTTP session when it gave up; a new one next time.
            session = self.client.client_session
            if session is not None:
                await session.close()
                self.client.client_session = None
            await asyncio.sleep(self.settings.retry_s)

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        sched = self.client.scheduler
        if sched.running:
            sched.shutdown(wait=False)
        if self.client.client_session is not None:
            await self.client.client_session.close()


def start_openadr(settings: OpenAdrSettings, scheduler: Any, now: Callable[[], float]) -> Ven:
    """The VEN running, its price windows feeding the planner's import price
    (planner/scheduler.py `Scheduler.import_adjust`) from the next decision on."""
    events = PriceEvents(settings)
    scheduler.import_adjust = events.import_prices
    ven = Ven(settings, events, now)
    ven.start()
    return ven
