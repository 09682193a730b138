"""The rollout is kept in the coordinator's SQLite database and shown where
users look: GET /api/updates (and UpdateService.meters_view, which the
household web app calls) and a Home Assistant `update` entity per meter
over MQTT."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers.codes import Code

from microgrid.coordinator.config import from_dict
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.telemetry.mqtt import MqttPublisher
from microgrid.coordinator.telemetry.settings import MqttSettings
from microgrid.coordinator.updates import ha
from microgrid.coordinator.updates.history import UpdateHistory
from microgrid.coordinator.updates.service import mount
from microgrid.shared import cbor, reading, secp256k1

from .test_peer_delivery import IMAGE, PUB, made

METERS = {}
for _n in range(3):
    _secret = bytes([_n + 60]) * 32
    METERS[reading.device_id(secp256k1.public_key(_secret))] = (_secret, secp256k1.public_key(_secret))
IDS = sorted(METERS)


def report(device: str, body: dict) -> bytes:
    secret, pub = METERS[device]
    return reading.sign_payload(secret, pub, cbor.dumps(body))


def coordinator(tmp_path: Path, db_path: Path, canary: int = 1):  # type: ignore[no-untyped-def]
    config = from_dict({"updates": {"enabled": True, "release_keys": [PUB.hex()], "board": "esp32-devkitc",
                                    "folder": str(tmp_path / "releases"), "canary": canary}})
    site = resource.Site()
    db = open_database(db_path)
    service = mount(config, site, resource.Resource(), "127.0.0.1:1",
                    lambda d: METERS[d][1] if d in METERS else None, db=db, devices=lambda: list(IDS))
    return service, site, db


async def api(site: resource.Site) -> dict:
    res = site._resources[("api", "updates")]  # type: ignore[attr-defined]
    resp = await res.render_get(aiocoap.Message(code=Code.GET))
    assert resp.code == Code.CONTENT
    return json.loads(resp.payload)


def test_the_rollout_survives_a_restart_and_shows_in_the_api(tmp_path: Path) -> None:
    db_path = tmp_path / "c.db"
    ok = {"v": "0.3.0", "to": "0.3.0", "ok": True, "why": ""}
    back = {"v": "0.2.0", "to": "0.3.0", "ok": False, "why": "no reading acknowledged within 900 s"}

    async def first() -> dict:
        service, site, db = coordinator(tmp_path, db_path)
        published: list[dict] = []
        service.on_meter = published.append
        service.store.add_release(made(), IMAGE)
        assert service.offer_suffix(IDS[0]) == " fw=0.3.0"  # the one canary
        assert service.offer_suffix(IDS[1]) == ""
        assert published[-1] == {"device_id": IDS[0], "installed_version": None, "latest_version": "0.3.0",
                                 "in_progress": True, "last_report_at": None, "last_rollback": None}
        assert service._report(report(IDS[0], back)) is None  # rolled back: the rollout halts
        assert service._report(report(IDS[1], ok)) is None  # (installed by hand, say)
        view = await api(site)
        db.close()
        return {"view": view, "published": published}

    got = asyncio.run(first())
    view = got["view"]
    assert [m["device_id"] for m in view["meters"]] == IDS  # every registered meter, reported or not
    m0 = view["meters"][0]
    assert m0["installed_version"] == "0.2.0" and not m0["in_progress"]
    assert m0["last_rollback"]["version"] == "0.3.0" and "900 s" in m0["last_rollback"]["why"]
    assert m0["halted"].startswith(f"rolled back on {IDS[0]}")
    assert view["meters"][2]["installed_version"] is None and view["offered"] == "0.3.0"
    assert got["published"][-1]["device_id"] == IDS[1] and got["published"][-1]["installed_version"] == "0.3.0"

    async def after_restart() -> dict:
        service, site, db = coordinator(tmp_path, db_path)
        try:
            # The halt, the canary and each meter's report came back from the database.
            assert service.offer_suffix(IDS[2]) == ""
            assert service.rollout.offered == {"0.3.0": {IDS[0]}}
            # A later success keeps the last rollback on show.
            assert service._report(report(IDS[0], ok)) is None
            return await api(site)
        finally:
            db.close()

    view = asyncio.run(after_restart())
    m0, m1 = view["meters"][0], view["meters"][1]
    assert m0["installed_version"] == "0.3.0" and m0["last_rollback"]["version"] == "0.3.0"
    assert m1["installed_version"] == "0.3.0" and m1["last_rollback"] is None
    assert view["rollout"]["halted"]["0.3.0"].startswith(f"rolled back on {IDS[0]}")
    meters, canaries, halted = UpdateHistory(open_database(db_path)).load()
    assert meters[IDS[0]]["ok"] and canaries == {"0.3.0": {IDS[0]}} and "0.3.0" in halted


def test_each_meter_is_a_home_assistant_update_entity(tmp_path: Path) -> None:
    pub = MqttPublisher(MqttSettings(enabled=True, node_id="home"), clock=lambda: 0.0, sw_version="1.0")
    view = {"device_id": IDS[0], "installed_version": "0.2.0", "latest_version": "0.3.0", "in_progress": True,
            "last_report_at": 5, "last_rollback": {"version": "0.2.9", "why": "crashed", "at": 4}}
    pub.publish_firmware(view)
    pub.publish_firmware(dict(view, in_progress=False, installed_version="0.3.0"))
    sent = [(m.topic, m.payload, m.retain) for m in pub._queue]
    configs = [s for s in sent if s[0].endswith("/config")]
    states = [s for s in sent if s[0].endswith("/firmware")]
    assert len(configs) == 1 and len(states) == 2  # discovery once, state each time
    topic, payload, retain = configs[0]
    assert topic == f"homeassistant/update/home/{IDS[0]}_firmware/config" and retain
    config = json.loads(payload)
    # On the meter's own HA device (its sensors' identifiers), read-only.
    assert config["device"] == {"identifiers": [f"microgrid_home_{IDS[0]}"]}
    assert config["device_class"] == "firmware" and "command_topic" not in config
    assert config["state_topic"] == ha.firmware_topic(pub.topics, IDS[0]) == f"microgrid/home/meter/{IDS[0]}/firmware"
    first, last = json.loads(states[0][1]), json.loads(states[1][1])
    assert first["installed_version"] == "0.2.0" and first["latest_version"] == "0.3.0" and first["in_progress"]
    assert last["installed_version"] == "0.3.0" and not last["in_progress"]
    assert last["last_rollback"] == {"version": "0.2.9", "why": "crashed", "at": 4} and states[1][2]
