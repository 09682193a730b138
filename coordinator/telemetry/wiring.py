"""What ties the MQTT publisher to the rest of the coordinator: meter names
as registered (also while running), and relays Home Assistant may switch,
switched on the event loop's thread (paho calls from its own)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Mapping

log = logging.getLogger("microgrid.telemetry")


def meter_names(store: Any) -> Callable[[str], str]:
    """A device id -> its registered name, looked up once per device: a
    meter registered after start is named as registered, not by its key."""
    known: dict[str, str] = {}

    def name(device_id: str) -> str:
        n = known.get(device_id)
        if n is None:
            d = store.device(device_id)
            if d is None:
                return device_id
            n = known[device_id] = d.name or device_id
        return n

    return name


def relays_to_home_assistant(mqtt: Any, relays: Mapping[str, Any], loop: asyncio.AbstractEventLoop,
                             every_s: float = 1.0) -> asyncio.Task[None]:
    """Each relay a switch; a command switches it on the loop's thread and
    publishes the state it is in afterwards. Returns the task that also
    publishes changes made elsewhere (the seller's credit cut-off, the web
    app, the console): cancel it at stop."""
    published: dict[str, str] = {}

    def publish(name: str) -> None:
        state = str(relays[name].state)
        if published.get(name) != state:
            published[name] = state
            mqtt.publish_relay(name, state)

    def switch(name: str, on: bool) -> None:
        relay = relays[name]
        relay.connect() if on else relay.disconnect()
        log.info("relay %s %s from Home Assistant", name, relay.state)
        publish(name)

    mqtt.set_relays(list(relays), lambda name, on: loop.call_soon_threadsafe(switch, name, on))

    async def watch() -> None:
        while True:
            for name in relays:
                publish(name)
            await asyncio.sleep(every_s)

    return loop.create_task(watch())
