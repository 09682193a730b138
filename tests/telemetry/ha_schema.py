"""Home Assistant's MQTT discovery rules for the configs we publish,
written out from its documentation and the schema of its MQTT sensor and
binary_sensor platforms (homeassistant/components/mqtt/sensor.py,
binary_sensor.py, abbreviations and the sensor device-class tables), so a
test can check a config as Home Assistant would before creating an entity.
"""

from __future__ import annotations

import re
from typing import Any

TOPIC = re.compile(r"^(?P<prefix>[^#+]+)/(?P<component>[a-z_]+)/(?:(?P<node>[a-zA-Z0-9_-]+)/)?(?P<object>[a-zA-Z0-9_-]+)/config$")

# Sensor device classes we might use -> units HA accepts for them.
UNITS: dict[str, set[str | None]] = {
    "energy": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal", "Mcal", "Gcal"},
    "power": {"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"},
    "voltage": {"µV", "mV", "V", "kV", "MV"},
    "current": {"mA", "A"},
    "frequency": {"Hz", "kHz", "MHz", "GHz"},
    "power_factor": {"%", None},
}
STATE_CLASSES = {
    "energy": {"total", "total_increasing"},
    "power": {"measurement"},
    "voltage": {"measurement"},
    "current": {"measurement"},
    "frequency": {"measurement"},
    "power_factor": {"measurement"},
}
SENSOR_KEYS = {
    "name", "unique_id", "state_topic", "value_template", "device_class", "state_class", "unit_of_measurement",
    "availability_topic", "payload_available", "payload_not_available", "device", "origin", "expire_after",
    "force_update", "json_attributes_topic", "json_attributes_template", "availability", "availability_mode",
    "suggested_display_precision", "icon", "enabled_by_default", "entity_category", "qos", "default_entity_id",
}
BINARY_SENSOR_KEYS = SENSOR_KEYS - {"state_class", "unit_of_measurement", "suggested_display_precision"} | {
    "payload_on", "payload_off", "off_delay"}
BINARY_DEVICE_CLASSES = {"connectivity", "problem", "power", "running", "plug"}
# The MQTT switch platform (homeassistant/components/mqtt/switch.py).
SWITCH_KEYS = {
    "name", "unique_id", "command_topic", "state_topic", "value_template", "payload_on", "payload_off", "state_on",
    "state_off", "optimistic", "retain", "qos", "availability_topic", "payload_available", "payload_not_available",
    "availability", "availability_mode", "device", "origin", "device_class", "icon", "enabled_by_default",
    "entity_category", "json_attributes_topic", "json_attributes_template", "default_entity_id",
}
SWITCH_DEVICE_CLASSES = {None, "outlet", "switch"}
DEVICE_KEYS = {"identifiers", "connections", "name", "manufacturer", "model", "model_id", "sw_version", "hw_version",
               "serial_number", "suggested_area", "via_device", "configuration_url"}


def problems(topic: str, config: Any) -> list[str]:
    out: list[str] = []
    m = TOPIC.match(topic)
    if not m:
        return [f"{topic}: not <prefix>/<component>/[<node_id>/]<object_id>/config with ids of [a-zA-Z0-9_-]"]
    component = m.group("component")
    if not isinstance(config, dict):
        return [f"{topic}: config is not a JSON object"]
    allowed = {"sensor": SENSOR_KEYS, "switch": SWITCH_KEYS}.get(component, BINARY_SENSOR_KEYS)
    for key in config:
        if key not in allowed:
            out.append(f"{topic}: unknown key {key!r}")
    if "availability" in config:
        av = config["availability"]
        if "availability_topic" in config:
            out.append(f"{topic}: availability and availability_topic are mutually exclusive")
        if not (isinstance(av, list) and av and all(isinstance(a, dict) and isinstance(a.get("topic"), str)
                                                    and set(a) <= {"topic", "payload_available",
                                                                   "payload_not_available", "value_template"}
                                                    for a in av)):
            out.append(f"{topic}: availability must be a list of {{topic: ...}}")
        if config.get("availability_mode", "latest") not in ("all", "any", "latest"):
            out.append(f"{topic}: availability_mode must be all, any or latest")
    state_topic = config.get("state_topic")
    if not isinstance(state_topic, str) or any(c in state_topic for c in "#+"):
        out.append(f"{topic}: state_topic must be a topic without wildcards")
    uid = config.get("unique_id")
    if not isinstance(uid, str) or not uid:
        out.append(f"{topic}: unique_id is required for discovery (devices need it)")
    dc = config.get("device_class")
    if component == "sensor" and dc is None:
        # No device class: any unit, and a numeric state needs a state class.
        if config.get("state_class") not in (None, "measurement", "total", "total_increasing"):
            out.append(f"{topic}: state_class {config.get('state_class')!r} is not valid")
        tpl = config.get("value_template", "")
        if not (isinstance(tpl, str) and tpl.startswith("{{") and tpl.endswith("}}")):
            out.append(f"{topic}: value_template must be a template")
    elif component == "sensor":
        if dc not in UNITS:
            out.append(f"{topic}: device_class {dc!r} is not one we expect")
        else:
            if config.get("unit_of_measurement") not in UNITS[dc]:
                out.append(f"{topic}: unit {config.get('unit_of_measurement')!r} is not valid for device_class {dc}")
            if config.get("state_class") not in STATE_CLASSES[dc]:
                out.append(f"{topic}: state_class {config.get('state_class')!r} is not valid for device_class {dc}")
        tpl = config.get("value_template", "")
        if not (isinstance(tpl, str) and tpl.startswith("{{") and tpl.endswith("}}")):
            out.append(f"{topic}: value_template must be a template")
    elif component == "binary_sensor":
        if dc not in BINARY_DEVICE_CLASSES:
            out.append(f"{topic}: binary_sensor device_class {dc!r} is not valid")
    elif component == "switch":
        if dc not in SWITCH_DEVICE_CLASSES:
            out.append(f"{topic}: switch device_class {dc!r} is not valid")
        cmd = config.get("command_topic")
        if not isinstance(cmd, str) or any(c in cmd for c in "#+"):
            out.append(f"{topic}: a switch needs a command_topic without wildcards")
    else:
        out.append(f"{topic}: component {component!r} is not sensor, binary_sensor or switch")
    device = config.get("device")
    if not isinstance(device, dict) or not (device.get("identifiers") or device.get("connections")):
        out.append(f"{topic}: device needs identifiers or connections")
    else:
        for key in device:
            if key not in DEVICE_KEYS:
                out.append(f"{topic}: unknown device key {key!r}")
        ids = device.get("identifiers")
        if not isinstance(ids, (list, str)):
            out.append(f"{topic}: device identifiers must be a string or a list")
    origin = config.get("origin")
    if origin is not None and not (isinstance(origin, dict) and isinstance(origin.get("name"), str)):
        out.append(f"{topic}: origin needs a name")
    if "expire_after" in config and not (isinstance(config["expire_after"], int) and config["expire_after"] > 0):
        out.append(f"{topic}: expire_after must be a positive integer")
    return out
