"""The coordinator's configuration: one TOML file, validated at start-up.

Every setting has a default here. A bad value stops the start with an error
naming the key, the value and what is allowed, so a technician fixes the
file instead of reading a traceback. Sections of later subsystems (MQTT,
Modbus, market, channels) are added here as they arrive.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .devices.battery_settings import BatterySettings
from .devices.gpio_settings import GpioSettings
from .devices.modbus_settings import ModbusSettings
from .devices.ocpp_settings import OcppSettings
from .grid.settings import GridSettings
from .link.settings import LinkSettings
from .market.settings import MarketSettings
from .membership.settings import ZoneSettings
from .secrets import redact_url
from .telemetry.settings import MqttSettings
from .overlay.settings import OverlaySettings
from .planner.settings import PlannerSettings
from .energy_company.settings import OpenAdrSettings
from .updates.settings import UpdatesSettings
from .web.settings import WebSettings


# A channel's shortest useful life before its close margin
# (channels.channel.ChannelPolicy.min_lock_seconds).
MIN_LOCK_S = 3600


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


@dataclass
class CoapSettings:
    host: str = "127.0.0.1"
    port: int = 5683
    # Transports opened (ingest/transports.py): "udp" (the default, alone),
    # "tcp" (CoAP over TCP on the same port), "ws" (CoAP over WebSocket on
    # port + 3000). A WebSocket handshake from a browser must come from one
    # of ws_origins (e.g. "https://ha.example.lan"); at most
    # max_tcp_connections TCP connections are kept at a time.
    transports: list[str] = field(default_factory=lambda: ["udp"])
    ws_origins: list[str] = field(default_factory=list)
    max_tcp_connections: int = 256

    def validate(self, section: str) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ConfigError(f"{section}.host={self.host!r}: expected an IP address such as 127.0.0.1 or ::") from None
        _int_range(f"{section}.port", self.port, 0, 65535)
        known = ("udp", "tcp", "ws")
        if (not isinstance(self.transports, list) or "udp" not in self.transports
                or any(t not in known for t in self.transports) or len(set(self.transports)) != len(self.transports)):
            raise ConfigError(f"{section}.transports={self.transports!r}: expected a list of distinct names from "
                              f"{', '.join(known)}, with \"udp\" (meters and peer coordinators use it)")
        if not isinstance(self.ws_origins, list) or not all(
                isinstance(o, str) and o.startswith(("http://", "https://")) and " " not in o for o in self.ws_origins):
            raise ConfigError(f"{section}.ws_origins={self.ws_origins!r}: expected a list of web origins such as "
                              "\"https://ha.example.lan\"")
        _int_range(f"{section}.max_tcp_connections", self.max_tcp_connections, 1, 10_000)


@dataclass
class StoreSettings:
    path: str = "microgrid.db"
    # Every reading for retention_raw_days, then one per meter per hour until
    # retention_hourly_days, then one per day (store/retention.py).
    retention_raw_days: int = 7
    retention_hourly_days: int = 90

    def validate(self, section: str) -> None:
        if not self.path:
            raise ConfigError(f"{section}.path: expected a file path for the SQLite database")
        _int_range(f"{section}.retention_raw_days", self.retention_raw_days, 1, 36500)
        _int_range(f"{section}.retention_hourly_days", self.retention_hourly_days, self.retention_raw_days, 36500)


@dataclass
class IngestSettings:
    # Readings whose time lies further than this in the future are refused:
    # a meter with a wrong clock must not write tomorrow's evidence.
    max_future_s: int = 300
    # Installer token required by POST /devices (empty: registration over
    # CoAP is disabled; `microgrid coordinator register-device` still works).
    installer_token: str = ""
    # Entries in the CoAP duplicate-message cache (about 2.7 KB each); the
    # bound on the server's memory at any request rate. See ingest/dedup.py.
    dedup_entries: int = 8192
    # Datagrams per second (and burst) one source address may send; over
    # that they are dropped unanswered (0: no limit). At most max_sources
    # addresses are tracked; rate_exempt are not limited (loopback: local
    # processes). A block-wise request may total at most max_request_bytes
    # (less for /readings and /devices). See ingest/limits.py.
    rate_per_source: int = 50
    burst_per_source: int = 100
    max_sources: int = 4096
    rate_exempt: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    max_request_bytes: int = 16384

    def validate(self, section: str) -> None:
        _int_range(f"{section}.max_future_s", self.max_future_s, 0, 10**9)
        _int_range(f"{section}.dedup_entries", self.dedup_entries, 16, 10**7)
        _int_range(f"{section}.rate_per_source", self.rate_per_source, 0, 10**6)
        _int_range(f"{section}.burst_per_source", self.burst_per_source, 1, 10**6)
        _int_range(f"{section}.max_sources", self.max_sources, 16, 10**6)
        _int_range(f"{section}.max_request_bytes", self.max_request_bytes, 1024, 1 << 20)
        if not isinstance(self.rate_exempt, list):
            raise ConfigError(f"{section}.rate_exempt: expected a list of IP addresses")
        for n, a in enumerate(self.rate_exempt):
            try:
                ipaddress.ip_address(a)
            except (ValueError, TypeError):
                raise ConfigError(f"{section}.rate_exempt[{n}]={a!r}: expected an IP address such as 127.0.0.1") \
                    from None


@dataclass
class ApiSettings:
    # SHA-256 (hex) of each application token allowed to read the API
    # (ingest/access.py); make one with `microgrid coordinator api-token`.
    # Empty: only applications with an OSCORE context may.
    token_sha256: list[str] = field(default_factory=list)

    def validate(self, section: str) -> None:
        if not isinstance(self.token_sha256, list):
            raise ConfigError(f"{section}.token_sha256: expected a list of SHA-256 hashes (64 hex digits)")
        for n, h in enumerate(self.token_sha256):
            if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
                raise ConfigError(f"{section}.token_sha256[{n}]: expected 64 lower-case hex digits (the SHA-256 "
                                  "of a token, as `microgrid coordinator api-token` prints it; never the token)")


@dataclass
class LogSettings:
    level: str = "info"

    def validate(self, section: str) -> None:
        allowed = ("debug", "info", "warning", "error")
        if self.level not in allowed:
            raise ConfigError(f"{section}.level={self.level!r}: expected one of {', '.join(allowed)}")


@dataclass
class ConsoleSettings:
    # Unix socket of the technician console; empty: console.sock beside the
    # database.
    socket: str = ""

    def validate(self, section: str) -> None:
        if len(self.socket) > 100:
            raise ConfigError(f"{section}.socket={self.socket!r}: a Unix socket path must be under 100 characters")


@dataclass
class IdentitySettings:
    # The coordinator's own secp256k1 key (signs overlay records, orders and
    # channel messages). Created with mode 0600 on first start.
    key_file: str = "coordinator.key"

    def validate(self, section: str) -> None:
        if not self.key_file:
            raise ConfigError(f"{section}.key_file: expected a file path")


@dataclass
class ChannelsSettings:
    enabled: bool = False
    wallet_path: str = "wallet.json"
    # The wallet's password is read from this file (mode 0600), or from the
    # environment variable MICROGRID_WALLET_PASSWORD when empty.
    wallet_password_file: str = ""
    # "local:PATH" keeps a local ledger (tests, demos, a private grid);
    # "rpc:http://127.0.0.1:8332" talks to a BSV node, logging in as
    # rpc_user with the password in rpc_password_file (mode 0600), or with
    # the node's own cookie file (rpc_cookie_file, "user:password"). Never
    # credentials in the URL: URLs are logged and shown.
    # "arc:https://arc.example.com" broadcasts through ARC (BSV's transaction
    # processor; broadcast, status, merkle proofs) with the API token in
    # arc_token_file (mode 0600; empty: no token), and reads the chain tip,
    # unspent outputs and block merkle roots from chain_lookup
    # ("rpc:http://127.0.0.1:8332", logging in as above): ARC has none.
    chain: str = "local:ledger.db"
    rpc_user: str = ""
    rpc_password_file: str = ""
    rpc_cookie_file: str = ""
    arc_token_file: str = ""
    chain_lookup: str = ""
    # Seconds a network backend waits for one answer.
    chain_timeout_s: int = 10
    store_path: str = "channels.db"
    fee_rate_sat_per_kb: int = 100
    capacity_sat: int = 2_000_000
    lock_s: int = 7 * 86400
    increment_wh: int = 10
    settle_delay_s: int = 120
    # As a buyer: pay for energy as it arrives, every stream_poll_s during
    # an interval (0: pay only once the interval is settled).
    stream_poll_s: int = 60
    # As a seller: a buyer more than credit_sat behind (on the settled
    # intervals, and during an interval on what its stream should have
    # paid by now) opens export_relay (a relay name from [gpio.relays];
    # empty: no relay to open).
    credit_sat: int = 500
    export_relay: str = ""
    # As a seller: close each incoming channel this long before its
    # refund's lock time (and stop taking updates on it then). On BSV the
    # lock time is judged against the median time past, about an hour
    # behind the clock, so three hours leave the close time to be mined.
    close_margin_s: int = 3 * 3600
    # As a seller: close a channel with less than this left to receive.
    full_below_sat: int = 1_000
    # How often (clock seconds) every channel is looked at: close when
    # due, refund abandoned ones, retry what the chain does not show yet.
    lifecycle_every_s: int = 300
    # As a seller: watch each incoming channel's funding until it has this
    # many confirmations; updates are refused while the chain does not show it.
    funding_confirmations: int = 1
    # As a buyer: open the next channel to a seller this long before the
    # current one's close margin begins (or once less than full_below_sat
    # would be left on it), so payments never wait for an open.
    renew_before_s: int = 86_400
    # As a seller: who may open channels to us (channels/admission.py):
    # with a [zone], its current members, further restricted to these
    # coordinator keys (66 hex digits) when the list is not empty; without
    # a zone, these keys only, and empty: nobody (we may still buy). And how
    # many: channels open per peer, unfunded per peer and in all, and the
    # total capacity of our incoming channels still to close.
    allowed_peers: list[str] = field(default_factory=list)
    max_open_per_peer: int = 4
    max_pending_per_peer: int = 1
    max_pending_total: int = 16
    max_capacity_sat: int = 200_000_000

    def _validate_url(self, name: str, spec: str, prefix: str, where: str) -> None:
        """`spec` is prefix + an http(s) URL without credentials; `where`
        says where the credentials go instead."""
        url = spec[len(prefix):]
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ConfigError(f"{name}: {redact_url(url)!r} is not a URL such as http://127.0.0.1:8332") \
                from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{name}={prefix + redact_url(url)!r}: expected {prefix}http(s)://HOST[:PORT][/PATH]")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"{name}: credentials in the URL would be logged and shown; {where}")

    def _validate_rpc(self, section: str, name: str, spec: str) -> None:
        self._validate_url(name, spec, "rpc:", f"put the user in {section}.rpc_user and the password in a file "
                           f"named by {section}.rpc_password_file (or the node's cookie file in "
                           f"{section}.rpc_cookie_file)")
        if self.rpc_cookie_file and (self.rpc_user or self.rpc_password_file):
            raise ConfigError(f"{section}.rpc_cookie_file holds the user and password: expected no "
                              f"{section}.rpc_user or {section}.rpc_password_file beside it")
        if bool(self.rpc_user) != bool(self.rpc_password_file):
            raise ConfigError(f"{section}.rpc_user and {section}.rpc_password_file go together")

    def validate(self, section: str) -> None:
        if not self.chain.startswith(("local:", "rpc:", "arc:")):
            raise ConfigError(f"{section}.chain={redact_url(self.chain)!r}: expected \"local:PATH\", \"rpc:URL\" "
                              f"or \"arc:URL\"")
        if self.chain.startswith("rpc:"):
            self._validate_rpc(section, f"{section}.chain", self.chain)
            if self.chain_lookup:
                raise ConfigError(f"{section}.chain_lookup is for chain = \"arc:URL\" only")
        if self.chain.startswith("arc:"):
            self._validate_url(f"{section}.chain", self.chain, "arc:",
                               f"put the API token in a file named by {section}.arc_token_file")
            if not self.chain_lookup.startswith("rpc:"):
                raise ConfigError(f"{section}.chain = \"arc:URL\" needs {section}.chain_lookup = \"rpc:URL\" (an SV "
                                  f"node for the chain tip, unspent outputs and block merkle roots, which ARC does "
                                  f"not serve)")
            self._validate_rpc(section, f"{section}.chain_lookup", self.chain_lookup)
        elif self.arc_token_file:
            raise ConfigError(f"{section}.arc_token_file is for chain = \"arc:URL\" only")
        _int_range(f"{section}.chain_timeout_s", self.chain_timeout_s, 1, 300)
        _int_range(f"{section}.fee_rate_sat_per_kb", self.fee_rate_sat_per_kb, 1, 100_000)
        _int_range(f"{section}.capacity_sat", self.capacity_sat, 1_000, 100_000_000)
        _int_range(f"{section}.lock_s", self.lock_s, 3600, 30 * 86400)
        _int_range(f"{section}.increment_wh", self.increment_wh, 1, 100_000)
        _int_range(f"{section}.settle_delay_s", self.settle_delay_s, 0, 3600)
        _int_range(f"{section}.stream_poll_s", self.stream_poll_s, 0, 3600)
        _int_range(f"{section}.credit_sat", self.credit_sat, 0, 100_000_000)
        _int_range(f"{section}.close_margin_s", self.close_margin_s, 60, 7 * 86400)
        _int_range(f"{section}.full_below_sat", self.full_below_sat, 0, self.capacity_sat)
        # Several looks inside the margin, so a failed close is retried in time.
        _int_range(f"{section}.lifecycle_every_s", self.lifecycle_every_s, 1, max(1, self.close_margin_s // 3))
        _int_range(f"{section}.renew_before_s", self.renew_before_s, 0, 30 * 86400)
        _int_range(f"{section}.funding_confirmations", self.funding_confirmations, 1, 100)
        if not isinstance(self.allowed_peers, list):
            raise ConfigError(f"{section}.allowed_peers: expected a list of coordinator public keys (66 hex digits)")
        for n, key in enumerate(self.allowed_peers):
            if not (isinstance(key, str) and len(key) == 66 and key[:2] in ("02", "03")
                    and all(c in "0123456789abcdefABCDEF" for c in key)):
                raise ConfigError(f"{section}.allowed_peers[{n}]={key!r}: expected a compressed public key, "
                                  "66 hex digits starting 02 or 03 (the peer coordinator's identity key)")
        _int_range(f"{section}.max_open_per_peer", self.max_open_per_peer, 1, 1_000)
        _int_range(f"{section}.max_pending_per_peer", self.max_pending_per_peer, 1, self.max_open_per_peer)
        _int_range(f"{section}.max_pending_total", self.max_pending_total, 1, 100_000)
        _int_range(f"{section}.max_capacity_sat", self.max_capacity_sat, self.capacity_sat, 2_100_000_000_000_000)
        least = self.close_margin_s + self.renew_before_s + MIN_LOCK_S
        if self.lock_s < least:
            raise ConfigError(f"{section}.lock_s={self.lock_s}: expected at least close_margin_s + renew_before_s + "
                              f"{MIN_LOCK_S} = {least} (a channel must take payments for an hour before it is "
                              "renewed and closed)")


@dataclass
class Config:
    coap: CoapSettings = field(default_factory=CoapSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    log: LogSettings = field(default_factory=LogSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    overlay: OverlaySettings = field(default_factory=OverlaySettings)
    market: MarketSettings = field(default_factory=MarketSettings)
    channels: ChannelsSettings = field(default_factory=ChannelsSettings)
    gpio: GpioSettings = field(default_factory=GpioSettings)
    modbus: ModbusSettings = field(default_factory=ModbusSettings)
    battery: BatterySettings = field(default_factory=BatterySettings)
    ocpp: OcppSettings = field(default_factory=OcppSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    zone: ZoneSettings = field(default_factory=ZoneSettings)
    link: LinkSettings = field(default_factory=LinkSettings)
    updates: UpdatesSettings = field(default_factory=UpdatesSettings)
    grid: GridSettings = field(default_factory=GridSettings)
    web: WebSettings = field(default_factory=WebSettings)
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    openadr: OpenAdrSettings = field(default_factory=OpenAdrSettings)

    def console_socket(self) -> Path:
        if self.console.socket:
            return Path(self.console.socket)
        return Path(self.store.path).resolve().parent / "console.sock"

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            try:
                getattr(self, f.name).validate(f.name)
            except ConfigError:
                raise
            except ValueError as e:  # the subsystems' own settings errors
                raise ConfigError(str(e)) from None
        if self.openadr.enabled and not self.planner.enabled:
            raise ConfigError("openadr.enabled = true: the price events feed the planner; expected [planner] "
                              "enabled = true")
        if self.channels.export_relay and self.channels.export_relay not in self.gpio.relays:
            raise ConfigError(f"channels.export_relay={self.channels.export_relay!r}: expected a relay of [gpio.relays] "
                              f"({', '.join(self.gpio.relays) or 'none configured'})")
        buses = {b.name for b in self.modbus.bus_settings()}
        for u in self.battery.unit_settings():
            if u.kind != "simulated" and u.bus not in buses:
                raise ConfigError(f"battery.units.{u.name}.bus={u.bus!r}: expected a bus of [modbus.buses] "
                                  f"({', '.join(sorted(buses)) or 'none configured'})")
        if self.market.enabled and not (self.overlay.enabled and self.channels.enabled):
            raise ConfigError("market.enabled = true needs overlay.enabled and channels.enabled: orders travel "
                              "through the overlay and payments through channels")
        if self.grid.enabled and not self.market.enabled:
            raise ConfigError("grid.enabled = true needs market.enabled: the network limits bound the market's "
                              "clearing")
        if self.zone.enabled and self.market.enabled and self.market.zone != self.zone.name:
            raise ConfigError(f"market.zone={self.market.zone!r}: expected the zone's name, zone.name="
                              f"{self.zone.name!r} (orders of one zone carry its name)")
        return self

    def resolve(self, path: str) -> Path:
        """A relative path in the config is relative to the database's folder."""
        p = Path(path)
        return p if p.is_absolute() else Path(self.store.path).resolve().parent / p


def _int_range(key: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{key}={value!r}: expected an integer in {lo}..{hi}")


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown setting; allowed: {', '.join(sorted(known))}")
        default = getattr(cls(), key)
        if default is not None and not isinstance(default, bool) and isinstance(default, (int, float, str)):
            want = type(default)
            ok = isinstance(value, want) and not isinstance(value, bool)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                raise ConfigError(f"{name}.{key}={value!r}: expected {want.__name__}")
        kwargs[key] = value
    return cls(**kwargs)


def _sections() -> dict[str, type]:
    defaults = Config()
    return {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(Config)}


def from_dict(raw: dict[str, Any]) -> Config:
    sections = _sections()
    kwargs = {}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(f"[{name}]: unknown section; allowed: {', '.join(sorted(sections))}")
        kwargs[name] = _build_section(name, sections[name], value)
    return Config(**kwargs).validate()


def load(path: str | Path | None) -> Config:
    """Load and validate a TOML file; None gives the defaults."""
    if path is None:
        return Config().validate()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    return from_dict(raw)
