"""The [ocpp] section: the coordinator as the OCPP central system that EV
chargers connect to (ocpp_central.py).

    [ocpp]
    enabled = true
    host = "0.0.0.0"           # where charge points reach us (127.0.0.1: this machine only)
    port = 8887
    path = "/ocpp"             # a charge point connects to ws://HOST:PORT/ocpp/<its id>
    versions = ["2.0.1", "1.6"]  # offered subprotocols, preferred first
    password_file = "ocpp.password"  # security profile 1: HTTP Basic, user = the charge point's id
    heartbeat_s = 300
    response_timeout_s = 10.0  # a SetChargingProfile unanswered this long: DeviceUnavailable
    rate_unit = "W"            # W | A: chargers that take limits in amps only
    voltage_v = 230.0          # for A: watts / (voltage_v x phases)
    phases = 3
    id_tags = []               # RFID tags / tokens allowed to charge; empty: any
    tls_cert_file = ""         # both set: wss:// (security profile 2: TLS 1.2+ and the Basic password)
    tls_key_file = ""

    [ocpp.chargers.garage]     # the table name is the charge point's id, exactly as it connects
    max_power_w = 11000        # set_limit above this is refused before sending
    password_file = ""         # this charger's own password; the [ocpp] one otherwise
    metering = "submeter"      # its meter values: "submeter" behind the house meter (stored, not
                               # settled twice) or "connection" (its own grid connection: settled)

A charge point not listed under [ocpp.chargers] is refused at the
handshake, whatever its password. Passwords are 16 to 40 characters
(OCPP 1.6 security whitepaper and 2.0.1, BasicAuthPassword), read from an
owner-only file (relative to the database's folder; `password` inline
works too but then sits in the config file). There is no "no password"
mode: security profile 1 at least.

>>> s = OcppSettings(password="0123456789abcdef", chargers={"cp-1": {}}).validate()
>>> s.charger_settings()[0].max_power_w
22000.0
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class OcppSettingsError(ValueError):
    """An [ocpp] setting is missing, of the wrong type or out of range."""


# OCPP 2.0.1 identity: up to 48 characters; URL-safe ones only (it is a path segment).
CHARGER_ID = re.compile(r"^[A-Za-z0-9_.:*+|@-]{1,48}$")
VERSIONS = ("2.0.1", "1.6")
SUBPROTOCOLS = {"2.0.1": "ocpp2.0.1", "1.6": "ocpp1.6"}
_CHARGER_KEYS = {"max_power_w": float, "password": str, "password_file": str, "metering": str}
# How a charger's meter values count (charger_metering.py): "submeter" behind the house
# meter (stored, not settled: the house meter already counts the car), "connection" its own.
METERING = ("submeter", "connection")


@dataclass(frozen=True)
class ChargerSettings:
    charger_id: str
    max_power_w: float = 22000.0
    password: str = field(default="", repr=False)
    password_file: str = ""
    metering: str = "submeter"


@dataclass
class OcppSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8887
    path: str = "/ocpp"
    versions: list[str] = field(default_factory=lambda: list(VERSIONS))
    password: str = field(default="", repr=False)
    password_file: str = ""
    heartbeat_s: int = 300
    response_timeout_s: float = 10.0
    rate_unit: str = "W"
    voltage_v: float = 230.0
    phases: int = 3
    id_tags: list[str] = field(default_factory=list)
    max_message_bytes: int = 65536
    meter_values_kept: int = 10000
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Out of repr: a charger's table may hold its password.
    chargers: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def validate(self, section: str = "ocpp") -> "OcppSettings":
        if not isinstance(self.enabled, bool):
            raise OcppSettingsError(f"{section}.enabled={self.enabled!r}: expected true or false")
        if not isinstance(self.host, str) or not self.host:
            raise OcppSettingsError(f"{section}.host={self.host!r}: expected an address to listen on")
        _int(f"{section}.port", self.port, 0, 65535)
        if not isinstance(self.path, str) or not re.match(r"^(/[A-Za-z0-9_.-]+)*$", self.path):
            raise OcppSettingsError(f"{section}.path={self.path!r}: expected a path such as /ocpp (or empty)")
        if (not isinstance(self.versions, list) or not self.versions
                or any(v not in VERSIONS for v in self.versions) or len(set(self.versions)) != len(self.versions)):
            raise OcppSettingsError(f"{section}.versions={self.versions!r}: expected a list of {', '.join(VERSIONS)}")
        _int(f"{section}.heartbeat_s", self.heartbeat_s, 10, 86400)
        _num(f"{section}.response_timeout_s", self.response_timeout_s, 0.1, 300)
        if self.rate_unit not in ("W", "A"):
            raise OcppSettingsError(f"{section}.rate_unit={self.rate_unit!r}: expected W or A")
        _num(f"{section}.voltage_v", self.voltage_v, 100, 500)
        _int(f"{section}.phases", self.phases, 1, 3)
        _int(f"{section}.max_message_bytes", self.max_message_bytes, 4096, 16 * 1024 * 1024)
        _int(f"{section}.meter_values_kept", self.meter_values_kept, 10, 10_000_000)
        if not isinstance(self.id_tags, list) or any(not isinstance(t, str) or not 0 < len(t) <= 36 for t in self.id_tags):
            raise OcppSettingsError(f"{section}.id_tags: expected a list of tokens of 1-36 characters")
        _password(section, self.password, self.password_file)
        if not isinstance(self.tls_cert_file, str) or not isinstance(self.tls_key_file, str) \
                or bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise OcppSettingsError(f"{section}.tls_cert_file / tls_key_file: set both (wss://) or neither (ws://)")
        chargers = self.charger_settings(section)
        if self.enabled and not chargers:
            raise OcppSettingsError(f"{section}.chargers: none listed; every charge point must be named in an "
                                    f"[{section}.chargers.ID] table to be let in")
        if not self.password and not self.password_file:
            lacking = [c.charger_id for c in chargers if not (c.password or c.password_file)]
            if lacking:
                raise OcppSettingsError(f"{section}.password_file: missing, and charger(s) {', '.join(lacking)} have no "
                                        "password of their own; OCPP security profile 1 needs one (16-40 characters)")
        return self

    def charger_settings(self, section: str = "ocpp") -> list[ChargerSettings]:
        if not isinstance(self.chargers, dict):
            raise OcppSettingsError(f"{section}.chargers={self.chargers!r}: expected a table of tables")
        out = []
        for cid, raw in self.chargers.items():
            key = f"{section}.chargers.{cid}"
            if not CHARGER_ID.match(cid):
                raise OcppSettingsError(f"{key}: a charge point id has 1-48 of A-Z a-z 0-9 _ . : * + | @ -")
            if not isinstance(raw, dict):
                raise OcppSettingsError(f"{key}={raw!r}: expected a table")
            for k, v in raw.items():
                want = _CHARGER_KEYS.get(k)
                if want is None:
                    raise OcppSettingsError(f"{key}.{k}: unknown setting; allowed: {', '.join(_CHARGER_KEYS)}")
                ok = isinstance(v, want) or (want is float and isinstance(v, int))
                if not ok or isinstance(v, bool):
                    raise OcppSettingsError(f"{key}.{k}: expected {want.__name__}")
            c = ChargerSettings(cid, float(raw.get("max_power_w", 22000.0)), raw.get("password", ""),
                                raw.get("password_file", ""), raw.get("metering", "submeter"))
            if c.metering not in METERING:
                raise OcppSettingsError(f"{key}.metering={c.metering!r}: expected one of {', '.join(METERING)}")
            _num(f"{key}.max_power_w", c.max_power_w, 100, 1_000_000)
            _password(key, c.password, c.password_file)
            out.append(c)
        return out

    def subprotocols(self) -> list[str]:
        return [SUBPROTOCOLS[v] for v in self.versions]


def read_password(where: str, password: str, password_file: str, base: Path | None = None) -> str:
    """The password itself: inline, or the file's first line. Raises
    OcppSettingsError for a missing, unreadable, group/world-readable or
    wrong-length file (the message never contains the password)."""
    if password:
        return password
    p = Path(password_file)
    if not p.is_absolute() and base is not None:
        p = base / p
    try:
        st = p.stat()
        lines = p.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise OcppSettingsError(f"{where}.password_file={str(p)!r}: cannot read it ({type(e).__name__})") from None
    text = lines[0] if lines else ""
    if os.name == "posix" and st.st_mode & 0o077:
        raise OcppSettingsError(f"{where}.password_file={str(p)!r}: readable by others (mode "
                                f"{st.st_mode & 0o777:o}); expected 600")
    if not 16 <= len(text) <= 40:
        raise OcppSettingsError(f"{where}.password_file={str(p)!r}: the password has {len(text)} characters; "
                                "expected 16 to 40")
    return text


def _password(key: str, password: Any, password_file: Any) -> None:
    if not isinstance(password, str) or not isinstance(password_file, str):
        raise OcppSettingsError(f"{key}.password / password_file: expected strings")
    if password and password_file:
        raise OcppSettingsError(f"{key}: set password or password_file, not both")
    if password and not 16 <= len(password) <= 40:
        raise OcppSettingsError(f"{key}.password: {len(password)} characters; expected 16 to 40 "
                                "(OCPP security profile 1)")


def _int(key: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise OcppSettingsError(f"{key}={value!r}: expected an integer in {lo}..{hi}")


def _num(key: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise OcppSettingsError(f"{key}={value!r}: expected a number in {lo}..{hi}")
