"""Home Assistant sees the market as the web app does, against a real
mosquitto and a real coordinator: relays are switches whose commands move
the GPIO, market and channel sensors are discovered, a meter registered
while running is named as registered, and a wired meter that stops
answering shows unavailable (its sensors expire after three polls too)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable

from microgrid.coordinator.app import Coordinator
from microgrid.coordinator.config import from_dict
from microgrid.coordinator.telemetry import messages
from microgrid.coordinator.telemetry.messages import Topics
from microgrid.coordinator.telemetry.mqtt import MqttPublisher
from microgrid.shared import reading, secp256k1

from ..conftest import free_udp_port
from ..devices.modbus_server import ModbusTestServer, eastron_device
from . import ha_schema
from .conftest import Broker
from .test_mqtt import Subscriber, settings, wait_for

SECRET = bytes(range(7, 39))


async def until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)


def configs(sub: Subscriber) -> dict[str, Any]:
    return {t: json.loads(p) for t, p in sub.matching(lambda t: t.startswith("homeassistant/") and t.endswith("/config"))}


def test_relays_switch_from_home_assistant_and_meters_follow_registration_and_health(
        tmp_path: Path, broker: Broker) -> None:
    sub = Subscriber(broker.port)

    async def go() -> None:
        dev = eastron_device(1, "sdm120", import_kwh=12.5, power=300.0)
        srv = await ModbusTestServer([dev]).start()
        cfg = from_dict({
            "coap": {"port": free_udp_port()}, "store": {"path": str(tmp_path / "c.db")},
            "console": {"socket": str(tmp_path / "console.sock")},
            "gpio": {"backend": "simulated", "leds": False, "relays": {"relay_1": {}}},
            "mqtt": {"enabled": True, "port": broker.port, "node_id": "cab7", "reconnect_min_s": 0.1,
                     "reconnect_max_s": 0.5},
            "modbus": {"enabled": True, "interval_s": 0.5, "timeout_s": 0.2, "retries": 1, "backoff_max_s": 0.5,
                       "buses": {"bus": {"kind": "tcp", "host": "127.0.0.1", "port": srv.port}},
                       "devices": {"boiler": {"bus": "bus", "unit": 1, "model": "sdm120"}}},
        })
        coord = Coordinator(cfg)
        await coord.start()
        try:
            relay = coord.relays["relay_1"]
            levels = coord.gpio.backend.levels
            off_level = levels[relay.pin]
            await until(lambda: sub.on("microgrid/cab7/relay/relay_1/state") == [b"OFF"], "the relay's state")
            await until(lambda: "homeassistant/switch/cab7/relay_relay_1/config" in configs(sub), "the switch")
            switch = configs(sub)["homeassistant/switch/cab7/relay_relay_1/config"]
            assert switch["command_topic"] == "microgrid/cab7/relay/relay_1/set"
            # Home Assistant switches it on; the GPIO follows; the state says so.
            sub.client.publish(switch["command_topic"], b"ON", qos=1)
            await until(lambda: levels[relay.pin] != off_level, "the GPIO switched")
            assert str(relay.state) == "connected"
            await until(lambda: sub.on("microgrid/cab7/relay/relay_1/state")[-1:] == [b"ON"], "state ON")
            # Nonsense and unknown relays change nothing.
            sub.client.publish(switch["command_topic"], b"MAYBE", qos=1)
            sub.client.publish("microgrid/cab7/relay/relay_9/set", b"OFF", qos=1)
            await asyncio.sleep(0.3)
            assert str(relay.state) == "connected"
            sub.client.publish(switch["command_topic"], b"off", qos=1)
            await until(lambda: levels[relay.pin] == off_level, "the GPIO switched back")
            await until(lambda: sub.on("microgrid/cab7/relay/relay_1/state")[-1:] == [b"OFF"], "state OFF")
            # Switched elsewhere (the seller's cut-off, the console): HA sees it.
            relay.connect()
            await until(lambda: sub.on("microgrid/cab7/relay/relay_1/state")[-1:] == [b"ON"], "state followed")
            relay.disconnect()

            # A meter registered while running is named as registered.
            pub = secp256k1.public_key(SECRET)
            coord.store.register_device(pub, name="kitchen")
            device_id = reading.device_id(pub)
            msg = reading.build(SECRET, pub, 1, 1_700_000_000, 100, 0, 42.0, 230.0)
            assert coord.ingest.accept(msg).ok
            meter = messages.safe_id(device_id)
            await until(lambda: f"homeassistant/sensor/cab7/{meter}_power/config" in configs(sub), "its discovery")
            assert configs(sub)[f"homeassistant/sensor/cab7/{meter}_power/config"]["device"]["name"] == "kitchen"

            # The wired meter: discovered with expire_after of three polls;
            # then its server dies and it shows unavailable.
            await until(lambda: "homeassistant/sensor/cab7/boiler_power/config" in configs(sub), "wired discovery")
            boiler = configs(sub)["homeassistant/sensor/cab7/boiler_power/config"]
            assert boiler["expire_after"] == 2  # ceil(3 x 0.5 s)
            assert {"topic": "microgrid/cab7/meter/boiler/availability"} in boiler["availability"]
            assert sub.on("microgrid/cab7/meter/boiler/availability")[-1:] == [b"online"]
            await srv.stop()
            await until(lambda: sub.on("microgrid/cab7/meter/boiler/availability")[-1:] == [b"offline"],
                        "the dead meter unavailable")
            await srv.start()
            await until(lambda: sub.on("microgrid/cab7/meter/boiler/availability")[-1:] == [b"online"],
                        "the meter back")
            for topic, config in configs(sub).items():
                assert ha_schema.problems(topic, config) == [], topic
        finally:
            await coord.stop()
            await srv.stop()

    try:
        asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        sub.close()


def test_market_and_channel_sensors_are_discovered_and_read_their_summaries(broker: Broker) -> None:
    sub = Subscriber(broker.port)
    pub = MqttPublisher(settings(broker.port))
    pub.start()
    try:
        pub.publish_market({"zone": "elm", "clearing_price_sat_per_kwh": 120, "self_sufficiency_ppm": 625_000,
                            "participants": {"02ab": {"earned_sat": 36, "paid_sat": 0}},
                            "ours": {"earned_sat": 36, "paid_sat": 0}})
        pub.publish_channels({"open": 2, "channels": [
            {"role": "payer", "state": "open", "capacity_sat": 100_000, "paid_sat": 30_000},
            {"role": "payer", "state": "closed", "capacity_sat": 100_000, "paid_sat": 100_000},
            {"role": "payee", "state": "open", "capacity_sat": 50_000, "paid_sat": 1_234}]})
        assert pub.wait_idle(10)
        wait_for(lambda: len([t for t in configs(sub) if "/market_" in t or "/channels_" in t])
                 == len(messages.SUMMARY_SENSORS), what="summary discovery")
    finally:
        pub.stop()
        sub.close()
    found = configs(sub)
    for topic, config in found.items():
        assert ha_schema.problems(topic, config) == [], topic
    topics = Topics("microgrid", "cab7")
    price = found["homeassistant/sensor/cab7/market_price/config"]
    assert price["state_topic"] == topics.market and price["unit_of_measurement"] == "sat/kWh"
    assert price["device"] == {"identifiers": ["microgrid_cab7"]}
    channels = json.loads(sub.on(topics.channels)[-1])
    assert (channels["to_spend_sat"], channels["received_sat"]) == (70_000, 1_234)
    market = json.loads(sub.on(topics.market)[-1])
    assert market["ours"]["earned_sat"] == 36 and market["self_sufficiency_ppm"] / 10000 == 62.5
