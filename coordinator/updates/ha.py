"""A meter's firmware in Home Assistant: the MQTT `update` entity HA users
expect (https://www.home-assistant.io/integrations/update.mqtt/), on the
meter's own HA device (the one its sensors are on, telemetry/messages.py).
Read-only: no command topic, the household's window and the staged
rollout decide when a meter installs (docs/UPDATES.md).

    <prefix>/<node>/meter/<meter>/firmware   JSON, retained: installed_version,
        latest_version, in_progress, title; last_rollback, halted as attributes
    <discovery>/update/<node>/<meter>_firmware/config
"""

from __future__ import annotations

import json
from typing import Any

from ..telemetry.messages import OFFLINE, ONLINE, Topics
from ..telemetry.settings import safe_id

TITLE = "microgrid meter firmware"


def firmware_topic(topics: Topics, meter: str) -> str:
    return f"{topics.base}/meter/{safe_id(meter)}/firmware"


def firmware_payload(view: dict[str, Any]) -> bytes:
    """UpdateService.meter_view as HA's update state (its keys) plus attributes."""
    body = {"installed_version": view.get("installed_version"), "latest_version": view.get("latest_version"),
            "in_progress": bool(view.get("in_progress")), "title": TITLE,
            "last_rollback": view.get("last_rollback"), "halted": view.get("halted")}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def update_discovery(topics: Topics, meter: str, sw_version: str) -> tuple[str, bytes]:
    node = topics.node
    meter_id = safe_id(meter)
    topic = firmware_topic(topics, meter)
    config = {
        "name": "Firmware",
        "unique_id": f"microgrid_{node}_{meter_id}_firmware",
        "state_topic": topic,
        "json_attributes_topic": topic,
        "json_attributes_template": "{{ {'last_rollback': value_json.last_rollback, "
                                    "'halted': value_json.halted} | tojson }}",
        "device_class": "firmware",
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": {"identifiers": [f"microgrid_{node}_{meter_id}"]},
        "origin": {"name": "microgrid", "sw_version": sw_version},
    }
    return (f"{topics.discovery_prefix}/update/{node}/{meter_id}_firmware/config",
            json.dumps(config, separators=(",", ":"), sort_keys=True).encode())
