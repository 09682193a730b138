"""What the coordinator publishes over MQTT: topics and payloads, built
without a connection (the publisher in mqtt.py only moves them).

Topics, under `<prefix>/<node>` (prefix "microgrid", node the
coordinator's id):

    <prefix>/<node>/status                 "online" / "offline" (retained; the last will)
    <prefix>/<node>/meter/<meter>/state    JSON object, one per reading (retained)
    <prefix>/<node>/meter/<meter>/senml    the same reading as a SenML JSON pack (RFC 8428)
    <prefix>/<node>/meter/<meter>/availability  "online" / "offline" (retained): a wired meter
                                           that stops answering is offline; every meter's
                                           entities need both this and the coordinator's status
    <prefix>/<node>/relay/<relay>/state    "ON" / "OFF" (retained): connected / disconnected
    <prefix>/<node>/relay/<relay>/set      "ON" / "OFF" from Home Assistant: switch the relay
    <prefix>/<node>/market                 JSON: the latest market summary (retained)
    <prefix>/<node>/channels               JSON: the latest channel summary (retained), after
                                           each settlement: every channel (role, peer, state,
                                           capacity, paid), what we owe and have signed to each
                                           seller, buyers behind, the export relay
    <discovery>/sensor/<node>/<meter>_<quantity>/config   Home Assistant discovery (retained)
    <discovery>/switch/<node>/relay_<relay>/config        a relay as a switch
    <discovery>/sensor/<node>/<market or channel key>/config  price, earnings, channel balance,
                                           self-sufficiency, on the coordinator's device

A meter's state object:

    {"meter": "house", "t": 1700000000.0, "source": "modbus:house",
     "import_wh": 12345678, "export_wh": 4321009, "power_w": -2981.5,
     "voltage_v": 231.4, "current_a": 13.37, "frequency_hz": 49.98, "power_factor": -0.97}

and its SenML pack uses the names and units of the signed reading
(shared/reading.py): import and export in Wh, power in W, voltage in V.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

from .settings import safe_id

ONLINE = "online"
OFFLINE = "offline"


@dataclass(frozen=True)
class MeterState:
    """One meter's latest values, from a CoAP reading or a Modbus device."""

    meter: str
    t: float
    import_wh: int | None = None
    export_wh: int | None = None
    power_w: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    frequency_hz: float | None = None
    power_factor: float | None = None
    source: str = ""  # "coap", "modbus:<name>"
    model: str = ""  # shown as the device model in Home Assistant
    name: str = ""  # a person's name for the meter; the id otherwise

    @classmethod
    def of(cls, obj: Any) -> "MeterState":
        """A MeterState from anything with the reading's attributes (a
        DeviceMeasurement, a stored reading) or a mapping of them."""
        if isinstance(obj, MeterState):
            return obj
        get = obj.get if isinstance(obj, Mapping) else (lambda k, d=None: getattr(obj, k, d))
        meter = get("meter") or get("device") or get("device_id")
        if not meter:
            raise ValueError(f"{obj!r}: expected a meter, device or device_id to name the meter")
        return cls(meter=str(meter), t=float(get("t", 0.0)), import_wh=get("import_wh"), export_wh=get("export_wh"),
                   power_w=get("power_w"), voltage_v=get("voltage_v"), current_a=get("current_a"),
                   frequency_hz=get("frequency_hz"), power_factor=get("power_factor"), source=get("source", "") or "",
                   model=get("model", "") or "", name=get("name", "") or "")


# quantity -> (state key, HA device_class, HA state_class, unit, SenML name, SenML unit, label)
QUANTITIES: tuple[tuple[str, str, str, str, str | None, str, str, str], ...] = (
    ("import", "import_wh", "energy", "total_increasing", "Wh", "import", "Wh", "Energy imported"),
    ("export", "export_wh", "energy", "total_increasing", "Wh", "export", "Wh", "Energy exported"),
    ("power", "power_w", "power", "measurement", "W", "power", "W", "Power"),
    ("voltage", "voltage_v", "voltage", "measurement", "V", "voltage", "V", "Voltage"),
    ("current", "current_a", "current", "measurement", "A", "current", "A", "Current"),
    ("frequency", "frequency_hz", "frequency", "measurement", "Hz", "frequency", "Hz", "Frequency"),
    ("power_factor", "power_factor", "power_factor", "measurement", None, "power_factor", "/", "Power factor"),
)


class Topics:
    def __init__(self, prefix: str, node: str, discovery_prefix: str = "homeassistant") -> None:
        self.prefix = prefix
        self.node = safe_id(node, "coordinator")
        self.discovery_prefix = discovery_prefix
        self.base = f"{prefix}/{self.node}"

    @property
    def availability(self) -> str:
        return f"{self.base}/status"

    def meter_state(self, meter: str) -> str:
        return f"{self.base}/meter/{safe_id(meter)}/state"

    def meter_senml(self, meter: str) -> str:
        return f"{self.base}/meter/{safe_id(meter)}/senml"

    @property
    def market(self) -> str:
        return f"{self.base}/market"

    @property
    def channels(self) -> str:
        return f"{self.base}/channels"

    def meter_availability(self, meter: str) -> str:
        return f"{self.base}/meter/{safe_id(meter)}/availability"

    def relay_state(self, relay: str) -> str:
        return f"{self.base}/relay/{safe_id(relay)}/state"

    def relay_command(self, relay: str) -> str:
        return f"{self.base}/relay/{safe_id(relay)}/set"

    def relay_from_command(self, topic: str) -> str | None:
        """The relay id a command topic names, or None for another topic."""
        head, tail = f"{self.base}/relay/", "/set"
        if topic.startswith(head) and topic.endswith(tail) and "/" not in topic[len(head):-len(tail)]:
            return topic[len(head):-len(tail)]
        return None

    def discovery(self, meter: str, quantity: str) -> str:
        return f"{self.discovery_prefix}/sensor/{self.node}/{safe_id(meter)}_{quantity}/config"

    def discovery_of(self, component: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node}/{safe_id(object_id)}/config"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth/will topic: "online" asks us to resend discovery."""
        return f"{self.discovery_prefix}/status"


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, default=_default).encode()


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (bytes, bytearray)):
        return obj.hex()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable; expected numbers, text, lists and mappings")


def present(state: MeterState) -> list[tuple[str, str, str, str, str | None, str, str, str]]:
    """The quantities this meter actually reports."""
    return [q for q in QUANTITIES if getattr(state, q[1]) is not None]


def state_payload(state: MeterState) -> bytes:
    body: dict[str, Any] = {"meter": state.meter, "t": state.t}
    if state.source:
        body["source"] = state.source
    for q in present(state):
        body[q[1]] = getattr(state, q[1])
    return _dump(body)


def senml_payload(state: MeterState) -> bytes:
    """RFC 8428 JSON: base name "<meter>:", base time t, one record per quantity."""
    pack: list[dict[str, Any]] = []
    for q in present(state):
        rec: dict[str, Any] = {"n": q[5], "u": q[6], "v": getattr(state, q[1])}
        if not pack:
            rec = {"bn": f"{state.meter}:", "bt": state.t, **rec}
        pack.append(rec)
    if not pack:
        pack.append({"bn": f"{state.meter}:", "bt": state.t, "n": "seen", "vb": True})
    return _dump(pack)


def summary_payload(kind: str, summary: Any, t: float) -> bytes:
    """A market or channel summary (a mapping or a dataclass) with its time."""
    body = dataclasses.asdict(summary) if dataclasses.is_dataclass(summary) and not isinstance(summary, type) else summary
    if not isinstance(body, Mapping):
        raise TypeError(f"{kind} summary {summary!r}: expected a mapping or a dataclass")
    return _dump({"kind": kind, "t": t, **body})


def discovery_configs(topics: Topics, state: MeterState, sw_version: str, expire_after_s: int = 0) -> list[tuple[str, bytes]]:
    """Home Assistant MQTT discovery: one sensor per quantity the meter
    reports, all on one HA device (the meter), reached via the coordinator.
    Available while both the coordinator and the meter are."""
    meter_id = safe_id(state.meter)
    node = topics.node
    device = {
        "identifiers": [f"microgrid_{node}_{meter_id}"],
        "name": state.name or state.meter,
        "manufacturer": "microgrid",
        "model": state.model or ("wired meter" if state.source.startswith("modbus:") else "microgrid meter"),
        "via_device": f"microgrid_{node}",
    }
    out = []
    for quantity, key, device_class, state_class, unit, *_rest, label in present(state):
        config: dict[str, Any] = {
            "name": label,
            "unique_id": f"microgrid_{node}_{meter_id}_{quantity}",
            "state_topic": topics.meter_state(state.meter),
            "value_template": f"{{{{ value_json.{key} }}}}",
            "device_class": device_class,
            "state_class": state_class,
            "availability": [{"topic": topics.availability}, {"topic": topics.meter_availability(state.meter)}],
            "availability_mode": "all",
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "device": device,
            "origin": {"name": "microgrid", "sw_version": sw_version},
        }
        if unit is not None:
            config["unit_of_measurement"] = unit
        if expire_after_s:
            config["expire_after"] = expire_after_s
        out.append((topics.discovery(state.meter, quantity), _dump(config)))
    return out


def coordinator_discovery(topics: Topics, sw_version: str) -> tuple[str, bytes]:
    """The coordinator itself as an HA device (the meters' via_device),
    with one connectivity sensor on the availability topic."""
    node = topics.node
    config = {
        "name": "Online",
        "unique_id": f"microgrid_{node}_online",
        "state_topic": topics.availability,
        "payload_on": ONLINE,
        "payload_off": OFFLINE,
        "device_class": "connectivity",
        "device": {"identifiers": [f"microgrid_{node}"], "name": f"microgrid coordinator {node}",
                   "manufacturer": "microgrid", "model": "coordinator", "sw_version": sw_version},
        "origin": {"name": "microgrid", "sw_version": sw_version},
    }
    return f"{topics.discovery_prefix}/binary_sensor/{node}/coordinator_online/config", _dump(config)


RELAY_ON, RELAY_OFF = "ON", "OFF"


def relay_payload(state: str) -> bytes:
    """A relay's state ("connected"/"disconnected") as the switch's payload."""
    return (RELAY_ON if str(state) == "connected" else RELAY_OFF).encode()


def _coordinator_device(topics: Topics) -> dict[str, Any]:
    # Only the identifiers: coordinator_discovery describes the device.
    return {"identifiers": [f"microgrid_{topics.node}"]}


def relay_discovery(topics: Topics, relay: str, sw_version: str) -> tuple[str, bytes]:
    """A relay as a Home Assistant switch on the coordinator's device:
    ON = connected; commands on the relay's /set topic."""
    node = topics.node
    config = {
        "name": f"Relay {relay}",
        "unique_id": f"microgrid_{node}_relay_{safe_id(relay)}",
        "command_topic": topics.relay_command(relay),
        "state_topic": topics.relay_state(relay),
        "payload_on": RELAY_ON, "payload_off": RELAY_OFF, "state_on": RELAY_ON, "state_off": RELAY_OFF,
        "optimistic": False,
        "availability_topic": topics.availability,
        "payload_available": ONLINE, "payload_not_available": OFFLINE,
        "device": _coordinator_device(topics),
        "origin": {"name": "microgrid", "sw_version": sw_version},
    }
    return topics.discovery_of("switch", f"relay_{relay}"), _dump(config)


# (object id, topic attribute, name, value template, unit, state class)
SUMMARY_SENSORS: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("market_price", "market", "Clearing price", "{{ value_json.clearing_price_sat_per_kwh }}", "sat/kWh",
     "measurement"),
    ("market_earned", "market", "Earned last interval", "{{ value_json.ours.earned_sat | default(0) }}", "sat",
     "measurement"),
    ("market_paid", "market", "Paid last interval", "{{ value_json.ours.paid_sat | default(0) }}", "sat",
     "measurement"),
    ("market_self_sufficiency", "market", "Zone self-sufficiency",
     "{{ (value_json.self_sufficiency_ppm / 10000) | round(1) }}", "%", "measurement"),
    ("channels_open", "channels", "Channels open", "{{ value_json.open }}", "", "measurement"),
    ("channels_to_spend", "channels", "Channel balance to spend", "{{ value_json.to_spend_sat }}", "sat",
     "measurement"),
    ("channels_received", "channels", "Received on channels", "{{ value_json.received_sat }}", "sat",
     "measurement"),
)


def summary_discovery(topics: Topics, sw_version: str) -> list[tuple[str, bytes]]:
    """Sensors for the market and channel summaries, on the coordinator's
    device (no HA device class: satoshis are no currency HA knows)."""
    node = topics.node
    out = []
    for object_id, kind, name, template, unit, state_class in SUMMARY_SENSORS:
        config: dict[str, Any] = {
            "name": name, "unique_id": f"microgrid_{node}_{object_id}",
            "state_topic": getattr(topics, kind), "value_template": template, "state_class": state_class,
            "availability_topic": topics.availability, "payload_available": ONLINE,
            "payload_not_available": OFFLINE, "device": _coordinator_device(topics),
            "origin": {"name": "microgrid", "sw_version": sw_version},
        }
        if unit:
            config["unit_of_measurement"] = unit
        out.append((topics.discovery_of("sensor", object_id), _dump(config)))
    return out


def channel_totals(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The channel summary with what its sensors read: what is left to pay
    on our open paying channels, and what our open receiving ones hold."""
    rows = [r for r in summary.get("channels", ()) if isinstance(r, Mapping) and r.get("state") == "open"]
    to_spend = sum(int(r.get("capacity_sat", 0)) - int(r.get("paid_sat", 0)) for r in rows if r.get("role") == "payer")
    received = sum(int(r.get("paid_sat", 0)) for r in rows if r.get("role") == "payee")
    return {**summary, "to_spend_sat": to_spend, "received_sat": received}
