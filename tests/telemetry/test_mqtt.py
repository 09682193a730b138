"""MQTT telemetry against a real mosquitto on a free loopback port: Home
Assistant discovery that validates, states, availability with a last will,
and no state lost across a broker restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from microgrid.coordinator.telemetry import messages
from microgrid.coordinator.telemetry.messages import MeterState, Topics
from microgrid.coordinator.telemetry.mqtt import MqttPublisher
from microgrid.coordinator.telemetry.settings import MqttSettings, MqttSettingsError, safe_id

from . import ha_schema
from .conftest import Broker, free_tcp_port


class Subscriber:
    """A paho client with a persistent session subscribed to everything."""

    def __init__(self, port: int, client_id: str = "test-subscriber") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.reconnect_delay_set(1, 1)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda cl, ud, fl, rc, pr: self.connected.clear()
        c.on_message = self._on_message
        c.connect_async("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.client = c
        assert self.connected.wait(10), "subscriber could not connect"

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        client.subscribe("#", qos=1)
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def matching(self, pred: Callable[[str], bool]) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(t, p) for t, p, _ in self.messages if pred(t)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


def settings(port: int, **kw: Any) -> MqttSettings:
    base: dict[str, Any] = dict(enabled=True, host="127.0.0.1", port=port, node_id="cab7", reconnect_min_s=0.1,
                                reconnect_max_s=0.5, keepalive_s=10)
    base.update(kw)
    return MqttSettings(**base)


HOUSE = MeterState(meter="house", t=1_700_000_000.0, import_wh=12345678, export_wh=4321009, power_w=-2981.5,
                   voltage_v=231.4, current_a=13.37, frequency_hz=49.98, power_factor=-0.97, source="modbus:house",
                   model="sdm630")


def test_discovery_configs_and_states_validate_and_arrive(broker: Broker) -> None:
    sub = Subscriber(broker.port)
    pub = MqttPublisher(settings(broker.port))
    pub.start()
    try:
        pub.publish_meter(HOUSE)
        # A CoAP meter with only the signed reading's four values.
        pub.publish_meter({"device_id": "a1b2c3:d4", "t": 1_700_000_010.0, "import_wh": 10, "export_wh": 0,
                           "power_w": 12.5, "voltage_v": 230.0, "source": "coap"})
        assert pub.wait_idle(10)
        wait_for(lambda: len(sub.on("microgrid/cab7/meter/house/state")) == 1, what="state")
        wait_for(lambda: len({t for t, _ in sub.matching(lambda t: t.endswith("/config"))}) == 7 + 4 + 1 + len(messages.SUMMARY_SENSORS),
                 what="discovery configs")
    finally:
        pub.stop()
        sub.close()

    configs = {t: json.loads(p) for t, p in sub.matching(lambda t: t.startswith("homeassistant/"))}
    for topic, config in configs.items():
        assert ha_schema.problems(topic, config) == [], topic
    imp = configs["homeassistant/sensor/cab7/house_import/config"]
    assert (imp["device_class"], imp["state_class"], imp["unit_of_measurement"]) == ("energy", "total_increasing", "Wh")
    assert imp["state_topic"] == "microgrid/cab7/meter/house/state"
    assert imp["availability"] == [{"topic": "microgrid/cab7/status"},
                                   {"topic": "microgrid/cab7/meter/house/availability"}]
    assert imp["availability_mode"] == "all"
    assert imp["device"]["identifiers"] == ["microgrid_cab7_house"] and imp["device"]["model"] == "sdm630"
    assert imp["device"]["via_device"] == "microgrid_cab7"
    assert configs["homeassistant/sensor/cab7/house_export/config"]["state_class"] == "total_increasing"
    assert configs["homeassistant/sensor/cab7/house_power/config"]["state_class"] == "measurement"
    # The CoAP meter's id has a colon: ids keep to [a-zA-Z0-9_-].
    assert "homeassistant/sensor/cab7/a1b2c3_d4_import/config" in configs
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)

    state = json.loads(sub.on("microgrid/cab7/meter/house/state")[0])
    assert state == {"meter": "house", "t": 1_700_000_000.0, "source": "modbus:house", "import_wh": 12345678,
                     "export_wh": 4321009, "power_w": -2981.5, "voltage_v": 231.4, "current_a": 13.37,
                     "frequency_hz": 49.98, "power_factor": -0.97}
    senml = json.loads(sub.on("microgrid/cab7/meter/house/senml")[0])
    assert senml[0]["bn"] == "house:" and senml[0]["bt"] == 1_700_000_000.0
    assert {r["n"]: (r["u"], r["v"]) for r in senml}["import"] == ("Wh", 12345678)
    assert {r["n"] for r in senml} == {"import", "export", "power", "voltage", "current", "frequency", "power_factor"}


def test_availability_is_online_then_offline_on_a_clean_stop(broker: Broker) -> None:
    sub = Subscriber(broker.port)
    pub = MqttPublisher(settings(broker.port))
    pub.start()
    wait_for(lambda: sub.on("microgrid/cab7/status") == [b"online"], what="online")
    pub.stop()
    wait_for(lambda: sub.on("microgrid/cab7/status") == [b"online", b"offline"], what="offline")
    sub.close()


CRASHING_PUBLISHER = """
import sys, time
from microgrid.coordinator.telemetry.mqtt import MqttPublisher
from microgrid.coordinator.telemetry.settings import MqttSettings
pub = MqttPublisher(MqttSettings(enabled=True, port=int(sys.argv[1]), node_id="crashy"))
pub.start()
pub.wait_idle(5)
while not pub.stats().connected:
    time.sleep(0.01)
print("up", flush=True)
time.sleep(60)
"""


def test_last_will_says_offline_when_the_coordinator_dies(broker: Broker) -> None:
    sub = Subscriber(broker.port)
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_PUBLISHER, str(broker.port)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        wait_for(lambda: sub.on("microgrid/crashy/status") == [b"online"], what="online")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: sub.on("microgrid/crashy/status") == [b"online", b"offline"], what="last will")
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()


def test_stopping_and_restarting_the_broker_loses_no_state_message(broker: Broker) -> None:
    sub = Subscriber(broker.port)
    pub = MqttPublisher(settings(broker.port, discovery=False))
    pub.start()
    topic = "microgrid/cab7/meter/m1/state"

    def publish(i: int) -> None:
        pub.publish_meter(MeterState(meter="m1", t=float(i), import_wh=i, export_wh=0, power_w=float(i)))

    try:
        wait_for(lambda: pub.stats().connected, what="publisher connected")
        for i in range(20):
            publish(i)
        broker.stop()
        wait_for(lambda: not pub.stats().connected, what="publisher noticed the broker left")
        for i in range(20, 50):
            publish(i)
        queued = pub.stats()
        assert queued.queued >= 30 * 2 - queued.inflight and not queued.connected  # state + senml per reading
        broker.start()
        assert pub.wait_idle(20), pub.stats()
        try:
            wait_for(lambda: {json.loads(p)["t"] for p in sub.on(topic)} >= {float(i) for i in range(50)}, what="all 50 states")
        except AssertionError:
            print("GOT", [json.loads(p)["t"] for p in sub.on(topic)], sub.connected.is_set())
            print((broker.workdir / "mosquitto.log").read_text()[-3000:])
            raise
        stats = pub.stats()
        assert stats.dropped == 0 and stats.connects >= 2 and stats.connected
    finally:
        pub.stop()
        sub.close()
    # In order per topic, duplicates (QoS 1 resends) aside.
    seen = [json.loads(p)["t"] for p in sub.on(topic)]
    assert sorted(set(seen)) == [float(i) for i in range(50)]
    first = [seen.index(float(i)) for i in range(50)]
    assert first == sorted(first)


def test_a_full_queue_drops_the_oldest_and_counts_them(broker: Broker) -> None:
    broker.stop()
    pub = MqttPublisher(settings(broker.port, queue_size=10, discovery=False))
    pub.start()
    try:
        for i in range(25):
            pub.publish_market({"interval": i, "price_sat_per_kwh": 100 + i})
        st = pub.stats()
        assert (st.queued, st.dropped, st.connected) == (10, 15, False)
        broker.start()
        sub = Subscriber(broker.port, client_id="late-subscriber")
        assert pub.wait_idle(20)
        # Retained: the subscriber sees the newest market summary. It may
        # subscribe while the queue is still draining and see a few of the
        # kept ones go by live first; never one of the dropped.
        def seen() -> list[int]:
            return [json.loads(m)["interval"] for m in sub.on("microgrid/cab7/market")]

        wait_for(lambda: seen()[-1:] == [24], what="the newest market summary")
        assert min(seen()) >= 15 and seen() == sorted(seen())
        sub.close()
    finally:
        pub.stop()


def test_market_and_channel_summaries_are_json_with_their_time(broker: Broker) -> None:
    from dataclasses import dataclass

    @dataclass
    class ChannelSummary:
        open: int
        funded_sat: int

    sub = Subscriber(broker.port)
    pub = MqttPublisher(settings(broker.port), clock=lambda: 1234.5)
    pub.start()
    try:
        pub.publish_market({"interval_start": 900, "clearing_price_sat_per_kwh": 120, "cleared_wh": 5400})
        pub.publish_channels(ChannelSummary(open=3, funded_sat=150000))
        assert pub.wait_idle(10)
        wait_for(lambda: sub.on("microgrid/cab7/channels") != [], what="channels")
        wait_for(lambda: sub.on("microgrid/cab7/market") != [], what="market")
    finally:
        pub.stop()
        sub.close()
    assert json.loads(sub.on("microgrid/cab7/market")[0]) == {"kind": "market", "t": 1234.5, "interval_start": 900,
                                                             "clearing_price_sat_per_kwh": 120, "cleared_wh": 5400}
    assert json.loads(sub.on("microgrid/cab7/channels")[0]) == {"kind": "channels", "t": 1234.5, "open": 3,
                                                               "funded_sat": 150000}


def test_home_assistant_coming_online_gets_discovery_again(broker: Broker) -> None:
    sub = Subscriber(broker.port)
    pub = MqttPublisher(settings(broker.port))
    pub.start()
    config = "homeassistant/sensor/cab7/house_import/config"
    try:
        pub.publish_meter(HOUSE)
        wait_for(lambda: len(sub.on(config)) >= 1, what="discovery")
        assert pub.wait_idle(10)
        before = len(sub.on(config))
        sub.client.publish("homeassistant/status", "online", qos=1)
        wait_for(lambda: len(sub.on(config)) == before + 1, what="discovery again")
    finally:
        pub.stop()
        sub.close()


def test_a_broker_that_is_down_at_start_is_retried() -> None:
    port = free_tcp_port()
    pub = MqttPublisher(settings(port))
    pub.start()
    try:
        pub.publish_meter(HOUSE)
        time.sleep(0.5)
        st = pub.stats()
        assert not st.connected and st.queued == 1 + 7 + 2  # availability, discovery, state, senml: waiting
    finally:
        assert pub.stop(flush_timeout_s=0.1) is False


# -- pure parts ---------------------------------------------------------------


@pytest.mark.parametrize("kw, message", [
    (dict(port=0), "mqtt.port=0: expected an integer in 1..65535"),
    (dict(qos=3), "mqtt.qos=3: expected an integer in 0..2"),
    (dict(node_id="cab 7"), "mqtt.node_id='cab 7': expected only A-Z a-z 0-9 _ -"),
    (dict(topic_prefix="a/#"), "mqtt.topic_prefix='a/#': expected topic levels"),
    (dict(discovery_prefix="/ha"), "mqtt.discovery_prefix='/ha'"),
    (dict(queue_size=0), "mqtt.queue_size=0"),
    (dict(reconnect_min_s=5, reconnect_max_s=1), "mqtt.reconnect_max_s=1: expected a number in 5..86400"),
    (dict(password="x"), "mqtt.password is set without mqtt.username"),
    (dict(tls="yes"), "mqtt.tls='yes': expected true or false"),
])
def test_bad_mqtt_settings_name_the_key(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(MqttSettingsError, match=message):
        MqttSettings(**kw).validate()


@given(st.text())
def test_ids_keep_to_the_characters_home_assistant_allows(text: str) -> None:
    out = safe_id(text)
    assert out and all(c.isascii() and (c.isalnum() or c in "_-") for c in out)


def test_discovery_only_for_reported_quantities() -> None:
    topics = Topics("microgrid", "n1")
    s0 = MeterState(meter="pulse", t=1.0, import_wh=5, power_w=3.0)
    configs = dict(messages.discovery_configs(topics, s0, "1.0", expire_after_s=600))
    assert set(configs) == {"homeassistant/sensor/n1/pulse_import/config", "homeassistant/sensor/n1/pulse_power/config"}
    for topic, payload in configs.items():
        config = json.loads(payload)
        assert ha_schema.problems(topic, config) == [] and config["expire_after"] == 600


def test_meter_state_from_a_modbus_measurement() -> None:
    from microgrid.coordinator.devices.registers import DeviceMeasurement

    m = DeviceMeasurement(device="pv", source="modbus:pv", model="sunspec-103", t=5.0, import_wh=None,
                          export_wh=99, power_w=-1200.0)
    state = MeterState.of(m)
    assert (state.meter, state.export_wh, state.import_wh, state.model) == ("pv", 99, None, "sunspec-103")
    assert json.loads(messages.state_payload(state)) == {"meter": "pv", "t": 5.0, "source": "modbus:pv",
                                                         "export_wh": 99, "power_w": -1200.0}
    with pytest.raises(ValueError, match="expected a meter, device or device_id"):
        MeterState.of({"t": 1})
