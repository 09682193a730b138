"""The MQTT publisher (paho-mqtt 2): meter states, market and channel
summaries, Home Assistant discovery, availability with a last will.

Delivery: every message goes into a bounded FIFO first. While connected,
the publisher hands messages to paho at QoS `qos`, at most `max_inflight`
unacknowledged at once; paho keeps a handed-over QoS 1/2 message until the
broker acknowledges it, resending it after a reconnect. While the broker
is away the FIFO grows up to `queue_size`; beyond that the oldest message
is dropped and counted (`stats().dropped`). So a broker restart loses no
state message unless the outage outlasts the queue.

Reconnects: paho's network thread retries with exponential backoff from
`reconnect_min_s` to `reconnect_max_s`. On every connect the publisher
announces "online" (retained; the broker publishes the retained "offline"
will if we vanish), re-sends discovery (a broker without persistence
forgets retained configs) and flushes the queue. When Home Assistant
announces itself on `<discovery>/status`, discovery is re-sent.

Home Assistant sees relays as switches: `set_relays` names them and the
function that switches one; a command on a relay's /set topic calls it
(from paho's thread: the caller hands it to its event loop) and the app
answers with `publish_relay`. A meter's entities need the coordinator and
the meter available: `set_meter_available` marks a wired meter that stops
answering offline, and a polled meter's sensors expire after three poll
intervals without a value (`polled`). A meter's discovery is sent again
when its name changes (registered while running).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
import math
from typing import Any, Callable, Iterable, Mapping

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from . import messages
from .messages import MeterState, Topics
from .settings import MqttSettings

log = logging.getLogger("microgrid.telemetry.mqtt")

try:
    from importlib.metadata import version as _version

    SW_VERSION = _version("microgrid")
except Exception:  # noqa: BLE001 - not installed: running from a checkout
    SW_VERSION = "0"


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True)
class PublisherStats:
    connected: bool
    queued: int  # waiting for the broker
    inflight: int  # handed to paho, not yet acknowledged
    dropped: int  # oldest messages dropped from a full queue
    acknowledged: int
    connects: int
    last_error: str


class MqttPublisher:
    def __init__(self, settings: MqttSettings, clock: Callable[[], float] = time.time,
                 sw_version: str = SW_VERSION) -> None:
        settings.validate()
        self.settings = settings
        self.clock = clock
        self.sw_version = sw_version
        self.topics = Topics(settings.topic_prefix, settings.node_id_or_default(), settings.discovery_prefix)
        self._lock = threading.Lock()
        self._queue: deque[Outgoing] = deque()
        self._unacked: dict[int, Outgoing] = {}
        self._early_acks: set[int] = set()
        self._sending = 0
        self._connected = False
        self._dropped = 0
        self._acked = 0
        self._connects = 0
        self._last_error = ""
        self._meters: dict[str, MeterState] = {}  # for discovery: every meter seen
        self._discovered: dict[str, tuple[str, ...]] = {}
        self._available: dict[str, bool] = {}  # meter -> last availability published
        self._relays: dict[str, str] = {}  # relay id in topics -> relay name
        self._on_relay_command: Callable[[str, bool], None] | None = None
        # Wired meters' poll intervals (s): their sensors expire after three.
        self.polled: dict[str, float] = {}
        self._firmware_discovered: set[str] = set()
        self._started = False
        self._stopping = False

        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id_or_default(),
                        protocol=paho.MQTTv311, clean_session=True)
        if settings.username:
            c.username_pw_set(settings.username, settings.password or None)
        if settings.tls:
            c.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        c.will_set(self.topics.availability, messages.OFFLINE, qos=1, retain=True)
        # paho doubles the delay after each failed attempt, from min to max.
        c.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)  # type: ignore[arg-type]
        c.max_inflight_messages_set(settings.max_inflight)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        self.client = c

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (a broker that is down is retried)."""
        if self._started:
            return
        self._started = True
        self._stopping = False
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self.client.loop_start()

    def stop(self, flush_timeout_s: float = 5.0) -> bool:
        """Flush what can be flushed within `flush_timeout_s`, announce
        "offline", disconnect. True if nothing was left unsent."""
        if not self._started:
            return not self._queue
        flushed = self.wait_idle(flush_timeout_s)
        self._stopping = True
        if self._connected:
            info = self.client.publish(self.topics.availability, messages.OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=min(2.0, flush_timeout_s))
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self._started = False
        with self._lock:
            self._connected = False
        return flushed

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued message is acknowledged (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queue and not self._unacked and not self._sending:
                    return True
            time.sleep(0.01)
        return False

    # -- what the app publishes ---------------------------------------------------

    def publish_meter(self, reading: Any) -> None:
        """A meter's new values (a MeterState, a DeviceMeasurement or a
        reading with the same attributes): state, SenML, and discovery the
        first time a quantity appears."""
        state = MeterState.of(reading)
        with self._lock:
            self._meters[state.meter] = state
            first = state.meter not in self._available
            if first:
                self._available[state.meter] = True
        if first:
            self._enqueue(Outgoing(self.topics.meter_availability(state.meter), messages.ONLINE.encode(), True))
        if self.settings.discovery:
            key = (state.name or state.meter,) + tuple(q[0] for q in messages.present(state))
            if self._discovered.get(state.meter) != key:
                self._discovered[state.meter] = key
                for topic, payload in self._meter_discovery(state):
                    self._enqueue(Outgoing(topic, payload, True))
        self._enqueue(Outgoing(self.topics.meter_state(state.meter), messages.state_payload(state), True))
        self._enqueue(Outgoing(self.topics.meter_senml(state.meter), messages.senml_payload(state), False))
        self._pump()

    def publish_firmware(self, view: dict[str, Any]) -> None:
        """A meter's firmware (coordinator/updates/ meter_view): its state and,
        the first time, Home Assistant's `update` entity (updates/ha.py)."""
        from ..updates import ha

        meter = view["device_id"]
        if self.settings.discovery and meter not in self._firmware_discovered:
            self._firmware_discovered.add(meter)
            self._enqueue(Outgoing(*ha.update_discovery(self.topics, meter, self.sw_version), True))
        self._enqueue(Outgoing(ha.firmware_topic(self.topics, meter), ha.firmware_payload(view), True))
        self._pump()

    def publish_market(self, summary: Any) -> None:
        self._enqueue(Outgoing(self.topics.market, messages.summary_payload("market", summary, self.clock()), True))
        self._pump()

    def publish_channels(self, summary: Any) -> None:
        if isinstance(summary, Mapping):
            summary = messages.channel_totals(summary)
        self._enqueue(Outgoing(self.topics.channels, messages.summary_payload("channels", summary, self.clock()), True))
        self._pump()

    def set_meter_available(self, meter: str, available: bool) -> None:
        """A meter answering again or not (a wired meter's polls): its
        entities show unavailable while it is not. Sent on change only."""
        with self._lock:
            if self._available.get(meter) == available:
                return
            self._available[meter] = available
        payload = messages.ONLINE if available else messages.OFFLINE
        self._enqueue(Outgoing(self.topics.meter_availability(meter), payload.encode(), True))
        self._pump()

    def set_relays(self, names: Iterable[str], on_command: Callable[[str, bool], None]) -> None:
        """Relays Home Assistant may switch: `on_command(name, on)` is
        called from paho's network thread for each valid command."""
        with self._lock:
            self._relays = {messages.safe_id(n): n for n in names}
            self._on_relay_command = on_command
            connected = self._connected
        if connected:
            for msg in self._relay_setup():
                self._enqueue(msg)
            self._subscribe_relays()
            self._pump()

    def publish_relay(self, name: str, state: Any) -> None:
        self._enqueue(Outgoing(self.topics.relay_state(name), messages.relay_payload(str(state)), True))
        self._pump()

    def stats(self) -> PublisherStats:
        with self._lock:
            return PublisherStats(self._connected, len(self._queue), len(self._unacked) + self._sending, self._dropped,
                                  self._acked, self._connects, self._last_error)

    def _meter_discovery(self, state: MeterState) -> list[tuple[str, bytes]]:
        expire = self.settings.expire_after_s
        interval = self.polled.get(state.meter)
        if interval:
            expire = max(expire, math.ceil(3 * interval))
        return messages.discovery_configs(self.topics, state, self.sw_version, expire)

    def _relay_setup(self) -> list[Outgoing]:
        if not self.settings.discovery:
            return []
        return [Outgoing(*messages.relay_discovery(self.topics, name, self.sw_version), True)
                for name in self._relays.values()]

    def _subscribe_relays(self) -> None:
        for name in self._relays.values():
            self.client.subscribe(self.topics.relay_command(name), qos=1)

    # -- the queue ------------------------------------------------------------------

    def _enqueue(self, msg: Outgoing, front: bool = False) -> None:
        with self._lock:
            if len(self._queue) >= self.settings.queue_size:
                dropped = self._queue.popleft()
                self._dropped += 1
                if self._dropped == 1 or self._dropped % 1000 == 0:
                    log.warning("mqtt queue full (%d messages, broker %s:%d unreachable): dropped the oldest, %s; "
                                "%d dropped so far", self.settings.queue_size, self.settings.host, self.settings.port,
                                dropped.topic, self._dropped)
            if front:
                self._queue.appendleft(msg)
            else:
                self._queue.append(msg)

    def _pump(self) -> None:
        """Hand queued messages to paho while connected and the window allows."""
        while True:
            with self._lock:
                if (not self._connected or not self._queue
                        or len(self._unacked) + self._sending >= self.settings.max_inflight):
                    return
                msg = self._queue.popleft()
                self._sending += 1
            info = self.client.publish(msg.topic, msg.payload, qos=self.settings.qos, retain=msg.retain)
            with self._lock:
                self._sending -= 1
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    # Not taken by paho: back to the head of the queue.
                    self._queue.appendleft(msg)
                    self._last_error = f"publish to {msg.topic}: {paho.error_string(info.rc)}"
                    return
                if self.settings.qos == 0:
                    self._acked += 1  # QoS 0 has no acknowledgement: handed over is all there is
                elif info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                    self._acked += 1
                else:
                    # paho keeps a QoS 1/2 message, even one it could not
                    # send yet (NO_CONN), and sends it after reconnecting.
                    self._unacked[info.mid] = msg

    # -- paho callbacks (paho's network thread) ----------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            with self._lock:
                self._last_error = f"broker {self.settings.host}:{self.settings.port} refused the connection: {reason_code}"
            log.warning("mqtt: %s", self._last_error)
            return
        with self._lock:
            self._connected = True
            self._connects += 1
            meters = list(self._meters.values())
            available = dict(self._available)
        log.info("mqtt: connected to %s:%d", self.settings.host, self.settings.port)
        # First "online", then discovery, then whatever waited.
        first: list[Outgoing] = [Outgoing(self.topics.availability, messages.ONLINE.encode(), True)]
        first += [Outgoing(self.topics.meter_availability(m), (messages.ONLINE if ok else messages.OFFLINE).encode(),
                           True) for m, ok in available.items()]
        if self.settings.discovery:
            first.append(Outgoing(*messages.coordinator_discovery(self.topics, self.sw_version), True))
            first += [Outgoing(t, p, True) for t, p in messages.summary_discovery(self.topics, self.sw_version)]
            first += self._relay_setup()
            for state in meters:
                first += [Outgoing(t, p, True) for t, p in self._meter_discovery(state)]
            client.subscribe(self.topics.ha_status, qos=1)
        self._subscribe_relays()
        for msg in reversed(first):
            self._enqueue(msg, front=True)
        # paho resends the messages it still holds (handed over, never
        # acknowledged) only after this callback returns. Sending more now
        # would overtake them; their acknowledgements restart the pump.
        with self._lock:
            held = bool(self._unacked)
        if not held:
            self._pump()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
            if reason_code != 0:
                self._last_error = f"lost the broker {self.settings.host}:{self.settings.port}: {reason_code}"
        if was and not self._stopping:
            log.warning("mqtt: disconnected from %s:%d (%s); queueing until it returns",
                        self.settings.host, self.settings.port, reason_code)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if self.settings.qos == 0:
            self._pump()
            return
        with self._lock:
            if self._unacked.pop(mid, None) is not None:
                self._acked += 1
            else:
                self._early_acks.add(mid)
        self._pump()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        relay_id = self.topics.relay_from_command(msg.topic)
        if relay_id is not None:
            self._relay_command(relay_id, bytes(msg.payload))
            return
        if msg.topic == self.topics.ha_status and msg.payload == messages.ONLINE.encode():
            with self._lock:
                meters = list(self._meters.values())
            for topic, payload in messages.summary_discovery(self.topics, self.sw_version):
                self._enqueue(Outgoing(topic, payload, True))
            for out in self._relay_setup():
                self._enqueue(out)
            for state in meters:
                for topic, payload in self._meter_discovery(state):
                    self._enqueue(Outgoing(topic, payload, True))
            self._pump()

    def _relay_command(self, relay_id: str, payload: bytes) -> None:
        """ON or OFF for a configured relay; anything else is logged and
        ignored (the broker is not trusted to name relays or states)."""
        with self._lock:
            name = self._relays.get(relay_id)
            handler = self._on_relay_command
        text = payload.decode("utf-8", "replace").strip().upper()
        if name is None or handler is None or text not in (messages.RELAY_ON, messages.RELAY_OFF):
            log.warning("mqtt: ignored relay command %r for %r (expected ON or OFF for one of %s)", text[:16],
                        relay_id[:32], ", ".join(self._relays) or "no relays")
            return
        try:
            handler(name, text == messages.RELAY_ON)
        except Exception:  # noqa: BLE001 - paho's thread must go on
            log.exception("mqtt: switching relay %s failed", name)
