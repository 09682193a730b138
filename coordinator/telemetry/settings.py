"""The [mqtt] section of the coordinator's configuration.

    [mqtt]
    enabled = true
    host = "127.0.0.1"
    port = 1883
    username = ""
    password = ""
    tls = false                       # TLS to the broker (system CA store)
    client_id = ""                    # "" -> "microgrid-<node_id>"
    topic_prefix = "microgrid"        # states under microgrid/<node_id>/...
    node_id = ""                      # "" -> this host's name, reduced to A-Z a-z 0-9 _ -
    discovery = true                  # Home Assistant MQTT discovery
    discovery_prefix = "homeassistant"
    qos = 1
    keepalive_s = 60
    reconnect_min_s = 1.0             # reconnect backoff doubles from this ...
    reconnect_max_s = 120.0           # ... up to this
    queue_size = 10000                # messages kept while the broker is away; oldest dropped beyond
    max_inflight = 20                 # unacknowledged messages handed to the broker at once
    expire_after_s = 0                # Home Assistant marks a sensor unavailable after this silence (0: never)

>>> MqttSettings(node_id="cabinet-7").validate().client_id_or_default()
'microgrid-cabinet-7'
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any


class MqttSettingsError(ValueError):
    """An [mqtt] setting is missing, of the wrong type or out of range."""


ID = re.compile(r"^[A-Za-z0-9_-]+$")
TOPIC_LEVELS = re.compile(r"^[^#+\x00]+$")


def safe_id(text: str, fallback: str = "x") -> str:
    """`text` reduced to the characters Home Assistant allows in discovery
    ids and that are safe in one MQTT topic level: A-Z a-z 0-9 _ -."""
    out = re.sub(r"[^A-Za-z0-9_-]", "_", text).strip("_")
    return out or fallback


@dataclass
class MqttSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password: str = ""
    tls: bool = False
    client_id: str = ""
    topic_prefix: str = "microgrid"
    node_id: str = ""
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    qos: int = 1
    keepalive_s: int = 60
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    queue_size: int = 10000
    max_inflight: int = 20
    expire_after_s: int = 0

    def validate(self, section: str = "mqtt") -> "MqttSettings":
        for key in ("enabled", "tls", "discovery"):
            if not isinstance(getattr(self, key), bool):
                raise MqttSettingsError(f"{section}.{key}={getattr(self, key)!r}: expected true or false")
        if not self.host or not isinstance(self.host, str):
            raise MqttSettingsError(f"{section}.host={self.host!r}: expected the broker's host name or address")
        _int(f"{section}.port", self.port, 1, 65535)
        _int(f"{section}.qos", self.qos, 0, 2)
        _int(f"{section}.keepalive_s", self.keepalive_s, 5, 3600)
        _int(f"{section}.queue_size", self.queue_size, 1, 10_000_000)
        _int(f"{section}.max_inflight", self.max_inflight, 1, 65535)
        _int(f"{section}.expire_after_s", self.expire_after_s, 0, 10**7)
        _num(f"{section}.reconnect_min_s", self.reconnect_min_s, 0.01, 3600)
        _num(f"{section}.reconnect_max_s", self.reconnect_max_s, self.reconnect_min_s, 86400)
        for key in ("topic_prefix", "discovery_prefix"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value or not TOPIC_LEVELS.match(value) or value.startswith("/") \
                    or value.endswith("/"):
                raise MqttSettingsError(f"{section}.{key}={value!r}: expected topic levels without #, + or "
                                        "leading/trailing /")
        if self.node_id and not ID.match(self.node_id):
            raise MqttSettingsError(f"{section}.node_id={self.node_id!r}: expected only A-Z a-z 0-9 _ -")
        if len(self.client_id) > 65535:
            raise MqttSettingsError(f"{section}.client_id: too long")
        if self.password and not self.username:
            raise MqttSettingsError(f"{section}.password is set without {section}.username")
        return self

    def node_id_or_default(self) -> str:
        return self.node_id or safe_id(socket.gethostname(), "coordinator")

    def client_id_or_default(self) -> str:
        return self.client_id or f"microgrid-{self.node_id_or_default()}"


def _int(key: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MqttSettingsError(f"{key}={value!r}: expected an integer in {lo}..{hi}")


def _num(key: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise MqttSettingsError(f"{key}={value!r}: expected a number in {lo}..{hi}")
