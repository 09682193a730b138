"""The coordinator as an appliance, configured from one config: a wired
SDM630 over Modbus (a real pymodbus server), MQTT to a real mosquitto with
Home Assistant discovery, a relay that returns to its safe state, all
alongside signed CoAP readings."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiocoap
from aiocoap.numbers.codes import Code

from microgrid.coordinator.app import Coordinator
from microgrid.coordinator.config import from_dict
from microgrid.coordinator.console import Console
from microgrid.shared import reading, secp256k1

from ..conftest import free_udp_port
from ..devices.modbus_server import ModbusTestServer, eastron_device
from ..telemetry.conftest import Broker
from ..telemetry.test_mqtt import Subscriber

SECRET = bytes(range(1, 33))
PUB = secp256k1.public_key(SECRET)


def test_modbus_mqtt_relay_and_coap_readings_work_together(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    broker.start()
    sub = Subscriber(broker.port)

    async def go() -> None:
        async with ModbusTestServer([eastron_device(1, "sdm630", import_kwh=12.5, export_kwh=3.25, power=1500.0,
                                                    voltage=231.0, frequency=50.0)]) as server:
            config = from_dict({
                "coap": {"host": "127.0.0.1", "port": free_udp_port()},
                "store": {"path": str(tmp_path / "c.db")},
                "gpio": {"backend": "simulated", "leds": False, "relays": {"relay_1": {"safe_state": "disconnected"}}},
                "modbus": {"enabled": True, "interval_s": 0.2,
                           "buses": {"cabinet": {"kind": "tcp", "host": "127.0.0.1", "port": server.port}},
                           "devices": {"grid": {"bus": "cabinet", "unit": 1, "model": "sdm630"}}},
                "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port, "node_id": "test-coordinator"},
            })
            coordinator = Coordinator(config)
            coordinator.store.register_device(PUB, "kitchen")
            await coordinator.start()
            client = await aiocoap.Context.create_client_context()
            try:
                msg = reading.build(SECRET, PUB, 1, int(time.time()), 42, 0, 300, 230.0)
                req = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{config.coap.port}/readings", payload=msg)
                req.opt.content_format = 18
                assert (await asyncio.wait_for(client.request(req).response, 10)).code == Code.CREATED

                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and not coordinator.store.last_reading("modbus-grid"):
                    await asyncio.sleep(0.05)
                wired = coordinator.store.last_reading("modbus-grid")
                assert wired is not None and wired["source"] == "modbus:grid"
                assert (wired["import_wh"], wired["export_wh"]) == (12500, 3250)

                device = reading.device_id(PUB)
                while time.monotonic() < deadline and not (sub.matching(lambda t: device in t and t.endswith("state"))
                                                           and sub.matching(lambda t: "grid" in t and t.endswith("state"))):
                    await asyncio.sleep(0.05)
                state = json.loads(sub.matching(lambda t: device in t and t.endswith("state"))[-1][1])
                assert state["import_wh"] == 42
                assert sub.matching(lambda t: t.startswith("homeassistant/sensor/") and t.endswith("/config"))

                console = Console(coordinator)
                assert console.handle("relay relay_1 on") == "relay relay_1: connected"
            finally:
                await client.shutdown()
                await coordinator.stop()
            # Stopping returns every relay to its configured safe state.
            assert str(coordinator.relays["relay_1"].state) == "disconnected"

    try:
        asyncio.run(go())
    finally:
        sub.close()
        broker.stop()
