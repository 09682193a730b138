"""Wiring only: config -> services -> run until asked to stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from bitcoinx import PrivateKey

import aiocoap
import aiocoap.resource as resource

from .clock import Clock, SystemClock
from .config import Config, ConfigError
from .console import Console
from .console_server import ConsoleServer
from .logs import LOG_BUFFER, report_suppressed_every
from .ingest.api import mount as mount_api
from .ingest.dedup import bound_duplicate_cache
from .ingest.access import Access, installer_grant
from .ingest.devices import MAX_BODY_BYTES as DEVICES_MAX_BODY
from .ingest.devices import devices_resource
from .ingest.guard import GuardedSite
from .ingest.limits import SourceLimiter, guard_udp
from .ingest import transports
from .ingest.readings import ReadingIngest
from .ingest.resources import HealthResource, ReadingsResource
from .link import SecureLink
from .secrets import write_new_secret_file
from .store.database import open_database
from .store.readings import ReadingStore
from .service.notify import Notifier
from microgrid.shared.reading import MAX_MESSAGE_BYTES

log = logging.getLogger("microgrid.coordinator")


def load_or_create_key(path: Path) -> PrivateKey:
    """The coordinator's identity key: 32 bytes hex in a 0600 file."""
    if path.exists():
        text = path.read_text().strip()
        try:
            return PrivateKey(bytes.fromhex(text))
        except ValueError:
            raise ConfigError(f"identity key file {path} does not hold a 32-byte hex key; restore it from backup") from None
    key = PrivateKey.from_random()
    write_new_secret_file(path, key.to_hex() + "\n")
    log.info("created identity key %s", path)
    return key


def wallet_password(config: Config) -> str:
    c = config.channels
    if c.wallet_password_file:
        return config.resolve(c.wallet_password_file).read_text().strip()
    pw = os.environ.get("MICROGRID_WALLET_PASSWORD", "")
    if not pw:
        raise ConfigError("channels.enabled needs the wallet password: set channels.wallet_password_file "
                          "or the environment variable MICROGRID_WALLET_PASSWORD")
    return pw


def open_chain(config: Config, clock: Clock) -> Any:
    spec = config.channels.chain
    if spec.startswith("local:"):
        from .channels.chain import LocalLedger

        return LocalLedger(str(config.resolve(spec[len("local:"):])), clock=clock)
    from .channels.chain_rpc import NodeRpcBackend

    c = config.channels
    user, password = rpc_credentials(config)
    if spec.startswith("arc:"):
        # ARC broadcasts and tells what became of a tx; the node is the
        # lookup source for what ARC lacks (channels/chain_arc.py).
        from .channels.chain_arc import ArcBackend

        lookup = NodeRpcBackend(c.chain_lookup[len("rpc:"):], user, password, timeout=c.chain_timeout_s)
        return ArcBackend(spec[len("arc:"):], lookup, arc_token(config), timeout=c.chain_timeout_s)
    return NodeRpcBackend(spec[len("rpc:"):], user, password, timeout=c.chain_timeout_s)


def arc_token(config: Config) -> str:
    """ARC's API token from its file (never in the URL or the settings,
    which are logged and shown); empty without one (a public ARC)."""
    c = config.channels
    if not c.arc_token_file:
        return ""
    path = config.resolve(c.arc_token_file)
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read channels.arc_token_file: {e.strerror} ({e.filename})") from None
    if not token or any(ch.isspace() for ch in token):
        raise ConfigError(f"channels.arc_token_file {path}: expected one token on one line")
    return token


def rpc_credentials(config: Config) -> tuple[str, str]:
    """The node's RPC user and password, from their files (never from the
    URL, which is logged)."""
    c = config.channels
    try:
        if c.rpc_cookie_file:
            path = config.resolve(c.rpc_cookie_file)
            user, sep, password = path.read_text().strip().partition(":")
            if not sep or not user:
                raise ConfigError(f"channels.rpc_cookie_file {path}: expected one line user:password")
            return user, password
        if c.rpc_password_file:
            return c.rpc_user, config.resolve(c.rpc_password_file).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the node's RPC credentials: {e.strerror} ({e.filename})") from None
    return "", ""


class Coordinator:
    def __init__(self, config: Config, clock: Clock | None = None, chain: Any = None, overlay: Any = None,
                 wallet: Any = None, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 market_poll_s: float = 0.05) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        # Time passed in: the market's and trading's waits (`sleep`, in the
        # clock's seconds) and how often the market re-reads the overlay
        # while a gate is open; a simulation steps them with its clock.
        self.sleep = sleep
        self.market_poll_s = market_poll_s
        self.chain = chain
        self.overlay = overlay
        self.wallet = wallet
        self.key = load_or_create_key(config.resolve(config.identity.key_file))
        self.trading: Any = None
        self.planner: Any = None  # coordinator/planner/ when [planner] is enabled
        self.openadr: Any = None  # energy_company/ven.py when [openadr] is enabled
        self.charger_metering: Any = None  # devices/charger_metering.py when [ocpp] is enabled
        self.gpio: Any = None
        self.mqtt: Any = None
        self.modbus: Any = None
        self.devices: Any = None  # DeviceService: batteries and EV chargers, when configured
        self._grid_task: asyncio.Future[None] | None = None
        self._modbus_task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._log_report_task: asyncio.Task[None] | None = None
        self._trading_task: asyncio.Task[None] | None = None
        self._stop_trading = asyncio.Event()
        self.channel_lifecycle: Any = None
        self._lifecycle_task: asyncio.Task[None] | None = None
        self._stop_lifecycle = asyncio.Event()
        self.db = open_database(config.store.path)
        self.store = ReadingStore(self.db)
        self.ingest = ReadingIngest(self.store, max_future_s=config.ingest.max_future_s, clock=self.clock.now)
        # OSCORE with the meters and installers (coordinator/link/).
        self.link = SecureLink(config.link, config.resolve(config.link.contexts_dir))
        # Who may read the API (ingest/access.py); the OSCORE set-up adds
        # its claim check with self.access.add_claim_check.
        self.access = Access(config.api.token_sha256)
        i = config.ingest
        self.limiter = SourceLimiter(i.rate_per_source, i.burst_per_source, i.max_sources, i.rate_exempt)
        self.udp_guard: Any = None
        self.tcp_counts: dict[str, int] = {}
        self.notifier = Notifier.from_environment()
        # An installer's OSCORE context may read the API too.
        self.access.add_claim_check(
            lambda claim: (self.link.contexts.owner(claim) or ("", ""))[0] == "installer")
        self.started = time.time()
        self.context: aiocoap.Context | None = None
        self.log_buffer = LOG_BUFFER
        # Optional subsystems the console shows; None until configured.
        self.relays: dict[str, Any] | None = None
        self.console_peers: Callable[[], list[dict[str, Any]]] | None = None
        self.console_orders: Callable[[], list[dict[str, Any]]] | None = None
        self.console_channels: Callable[[], list[dict[str, Any]]] | None = None
        self.updates: Any = None  # coordinator/updates/ when [updates] is enabled
        self.web: Any = None  # coordinator/web/ when [web] is enabled
        self._relay_watch: asyncio.Task[None] | None = None  # relay states to Home Assistant
        self.console_updates: Callable[[], dict[str, Any]] | None = None
        self.console_market: Callable[[int], list[str]] | None = None
        self.console_server = ConsoleServer(Console(self), config.console_socket())
        # Zone membership (coordinator/membership): who counts in every layer.
        self.membership: Any = None
        self.membership_sync: Any = None
        self._membership_task: asyncio.Task[None] | None = None
        self._stop_membership = asyncio.Event()
        if config.zone.enabled:
            from .membership.gate import MembershipGate
            from .membership.roster import Roster

            self.membership = MembershipGate(Roster(config.zone.zone()), self.clock.now)

    def is_member(self) -> Callable[[bytes], bool] | None:
        """The membership predicate the layers take; None without a zone."""
        return None if self.membership is None else self.membership.is_member

    def status(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "uptime_s": round(time.time() - self.started, 1),
            "devices": len(self.store.devices()),
            "readings": self.store.count(),
            "ingest": dict(self.ingest.counts),
            "link": self.link.status(),
            "guard": {**(self.udp_guard.counts if self.udp_guard else {}), **self.tcp_counts},
            "access": dict(self.access.counts),
        }

    def site(self) -> resource.Site:
        # Deny by default: only ingest/guard.py's OPEN list goes without
        # credentials; block-wise uploads are bounded per resource.
        site = GuardedSite(self.access, self.config.ingest.max_request_bytes,
                           {("readings",): MAX_MESSAGE_BYTES, ("devices",): DEVICES_MAX_BODY}, self.limiter)
        site.add_resource([".well-known", "core"], resource.WKCResource(site.get_resources_as_linkheader))
        readings = ReadingsResource(self.ingest)
        devices = devices_resource(self.store, self.config.ingest.installer_token)
        self.link.guard(readings, devices)
        self.readings_resource = readings  # the updates service wraps it (2.01s carry its offers)
        site.add_resource(["readings"], readings)
        site.add_resource(["health"], HealthResource(self.status, self.access))
        site.add_resource(["devices"], devices)
        site.grant(("devices",), "GET", installer_grant(self.config.ingest.installer_token))
        mount_api(site, self)
        return site

    def _channel_node(self) -> Any:
        from .channels.admission import Admission
        from .channels.channel import ChannelPolicy
        from .channels.protocol import ChannelNode
        from .channels.store import ChannelStore
        from .channels.wallet import Wallet

        c = self.config.channels
        if self.wallet is None:
            path = self.config.resolve(c.wallet_path)
            pw = wallet_password(self.config)
            if path.exists():
                self.wallet = Wallet.open(path, pw)
            else:
                self.wallet = Wallet.create(path, pw, fee_rate=c.fee_rate_sat_per_kb)
        if self.chain is None:
            self.chain = open_chain(self.config, self.clock)
        store = ChannelStore(self.config.resolve(c.store_path), clock=self.clock.now)
        policy = ChannelPolicy(fee_rate=self.wallet.fee_rate, dust_limit=self.wallet.dust_limit,
                               close_margin=c.close_margin_s)
        admission = Admission(frozenset(bytes.fromhex(k) for k in c.allowed_peers), c.max_open_per_peer,
                              c.max_pending_per_peer, c.max_pending_total, c.max_capacity_sat,
                              is_member=self.is_member())
        return ChannelNode(self.key, self.wallet, store, self.chain, self.clock, policy=policy,
                           uri=self.coap_uri("channel"), admission=admission)

    def _start_channel_lifecycle(self, node: Any) -> None:
        """Close, refund and retry on every channel by itself, periodically
        (channels/lifecycle.py)."""
        from .channels.lifecycle import ChannelLifecycle, LifecycleSettings
        from .channels.transport import ChannelClient

        assert self.context is not None
        c = self.config.channels
        self.channel_lifecycle = ChannelLifecycle(
            node, ChannelClient(node, self.context).exchange,
            LifecycleSettings(every_s=c.lifecycle_every_s, full_below_sat=c.full_below_sat,
                              confirmations=c.funding_confirmations))
        self._lifecycle_task = asyncio.ensure_future(self.channel_lifecycle.run(self._stop_lifecycle))

    def coap_uri(self, path: str) -> str:
        c = self.config.coap
        host = f"[{c.host}]" if ":" in c.host else c.host
        return f"coap://{host}:{c.port}/{path}"

    async def start(self, defer_trading: bool = False) -> None:
        """Serve. With `defer_trading`, the market starts only when
        `start_trading()` is called (the demo first provisions its meters)."""
        c = self.config.coap
        self._start_devices()
        await self._start_batteries_and_chargers()
        site = self.site()
        node = None
        if self.config.channels.enabled:
            from .channels.transport import site as channel_site

            node = self._channel_node()
            channel_site(node, site)
            self.console_channels = node.rows
            from .trading.live import PATH as LIVE_PATH, LiveResource

            # Our live totals, for the counterparties that stream by them.
            site.add_resource(list(LIVE_PATH), LiveResource(
                lambda start: self.trading.exchange.live.get(start) if self.trading is not None else None))
        if self.config.updates.enabled:
            from .updates.service import mount

            store = self.store
            self.updates = mount(self.config, site, self.readings_resource, f"{c.host}:{c.port}",
                                 lambda d: (dev.public_key if (dev := store.device(d)) else None), db=self.db,
                                 devices=lambda: [d.device_id for d in store.devices()])
            self.console_updates = self.updates.status
            if self.mqtt is not None:
                self.updates.on_meter = self.mqtt.publish_firmware
        self.context = await aiocoap.Context.create_server_context(self.link.wrap(site), bind=(c.host, c.port),
                                                                   transports=transports.aiocoap_names(c.transports))
        self.dedup_caches = bound_duplicate_cache(self.context, self.config.ingest.dedup_entries)
        self.udp_guard = guard_udp(self.context, self.limiter)
        if "tcp" in c.transports:
            self.tcp_counts = transports.cap_tcp(self.context, c.max_tcp_connections)
        if "ws" in c.transports:
            await transports.open_websocket(self.context, c.host, c.port, c.ws_origins)
        if node is not None:
            self._start_channel_lifecycle(node)
        if self.config.overlay.enabled and self.overlay is None:
            from .overlay import Overlay

            self.overlay = Overlay(self.key, self.config.overlay, clock=self.clock.now,
                                   accept=None if self.membership is None else self.membership.accept_record)
        if self.overlay is not None and self.membership is not None and self.overlay.accept is None:
            self.overlay.accept = self.membership.accept_record
        if self.overlay is not None and not self.overlay.running:
            await self.overlay.start()
        if self.overlay is not None:
            await self._start_membership()
        if self.overlay is not None:
            overlay = self.overlay
            self.console_peers = lambda: [{"node": p.node_id[:16], "address": p.address, "status": p.status}
                                          for p in overlay.peers()]
        if self.updates is not None:
            await self.updates.start(self.context, self.overlay)
        if self.config.grid.enabled:
            # With the roster loaded and before the market clears anything:
            # every clearing is bounded by the same limits from the start.
            await self.refresh_network_limits()
            self._grid_task = asyncio.ensure_future(self._grid_loop())
        if self.config.market.enabled and node is not None:
            from .trading.service import TradingService, TradingSettings

            ch = self.config.channels
            self.trading = TradingService(
                key=self.key, overlay=self.overlay, market=self.config.market, clock=self.clock, store=self.store,
                device_ids=self.connection_device_ids, node=node, context=self.context,
                own_uri=self.coap_uri("channel"),
                settings=TradingSettings(increment_wh=ch.increment_wh, channel_capacity_sat=ch.capacity_sat,
                                         channel_lock_s=ch.lock_s, settle_delay_s=ch.settle_delay_s,
                                         credit_sat=ch.credit_sat, stream_poll_s=ch.stream_poll_s,
                                         renew_before_s=ch.renew_before_s, reserve_sat=ch.full_below_sat),
                export_relay=(self.relays or {}).get(ch.export_relay) if ch.export_relay else None,
                is_member=self.is_member(), sleep=self.sleep, poll_s=self.market_poll_s,
            )
            if self.membership is None:
                log.warning("no [zone] configured: orders, metering and channels of any key are taken "
                            "(docs/MEMBERSHIP.md)")
            if self.mqtt is not None:
                from .market.settlement import report

                mqtt, trader = self.mqtt, self.trading

                def on_settled(settlement: Any) -> None:
                    summary = report(settlement)
                    summary["ours"] = summary["participants"].get(trader.public_hex, {})  # HA's earnings sensors
                    mqtt.publish_market(summary)
                    mqtt.publish_channels(trader.channel_summary())

                self.trading.on_settled = on_settled
            if not defer_trading:
                self.start_trading()
            trading = self.trading

            def market_lines(n: int) -> list[str]:
                from .market.settlement import report_lines

                out: list[str] = []
                for start in sorted(trading.stats.settled)[-n:]:
                    out += report_lines(trading.stats.settled[start], {trading.public_hex: "us"})
                return out + trading.accounts.lines() + trading.credit.lines()

            self.console_market = market_lines
            self.console_orders = lambda: [
                {"interval": start, "side": so.side, "wh": so.order.quantity_wh,
                 "limit_sat_per_kwh": so.order.limit_sat_per_kwh, "hash": so.hash_hex[:16]}
                for start, rnd in sorted(trading.market.rounds.items())[-8:] for so in rnd.own_orders
            ]
        if self.config.planner.enabled:
            from .planner.wiring import start_planner

            self.planner = start_planner(self)
            if self.config.openadr.enabled:  # the energy company's price events -> the plan's import price
                from .energy_company.ven import start_openadr

                self.openadr = start_openadr(self.config.openadr, self.planner.scheduler, self.clock.now)
        self._retention_task = asyncio.ensure_future(self._retention_loop())
        self._log_report_task = asyncio.ensure_future(report_suppressed_every())
        await self.console_server.start()
        if self.config.web.enabled:
            from .web.server import WebApp

            self.web = WebApp(self, self.config.web, self.config.resolve(self.config.web.state_dir))
            await self.web.start()
        self.notifier.start()  # READY=1, then WATCHDOG=1 from the event loop (service/notify.py)
        log.info("coordinator listening on coap://%s:%d (%s; database %s)", c.host, c.port,
                 ", ".join(c.transports), self.config.store.path)

    async def _start_membership(self) -> None:
        """The roster from the records folder and cache, then the overlay's
        board (once now, so trading starts knowing the members), then kept
        current in the background."""
        if self.membership is None:
            return
        from .membership.sync import MembershipSync

        z = self.config.zone
        self.membership_sync = MembershipSync(
            self.overlay, self.membership.roster, self.clock, self.key.public_key.to_bytes(compressed=True),
            records_dir=self.config.resolve(z.records_dir), cache_path=self.config.resolve(z.cache_path),
            refresh_s=z.refresh_s, republish_s=z.republish_s)
        self.membership_sync.load_local()
        self.membership_sync.start()
        try:
            await self.membership_sync.republish()
            await self.membership_sync.refresh()
        except Exception:  # noqa: BLE001 - the background loop retries
            log.exception("first read of the zone's membership board failed")
        self._membership_task = asyncio.ensure_future(self.membership_sync.run(self._stop_membership))

    def _start_devices(self) -> None:
        """Relays and LEDs, wired meters and MQTT, as the config asks."""
        cfg = self.config
        if cfg.gpio.relays or cfg.gpio.backend != "auto":
            from .devices.gpio_settings import open_gpio

            self.gpio = open_gpio(cfg.gpio)
            self.gpio.fail_safe.install()
            self.relays = dict(self.gpio.relays)
        if cfg.mqtt.enabled:
            from .telemetry.mqtt import MqttPublisher

            self.mqtt = MqttPublisher(cfg.mqtt, clock=self.clock.now)
            self.mqtt.start()
            from .telemetry.wiring import meter_names, relays_to_home_assistant

            mqtt = self.mqtt
            name_of = meter_names(self.store)
            if self.relays:
                self._relay_watch = relays_to_home_assistant(mqtt, self.relays, asyncio.get_running_loop())

            def publish(r: Any) -> None:
                mqtt.publish_meter({"device_id": r.device, "name": name_of(r.device), "t": r.t,
                                    "import_wh": r.import_wh, "export_wh": r.export_wh, "power_w": r.power_w,
                                    "voltage_v": r.voltage_v, "current_a": r.extra.get("current"),
                                    "frequency_hz": r.extra.get("frequency"), "source": "coap"})

            self.ingest.on_stored = publish
        if cfg.modbus.enabled:
            from .devices.modbus import ModbusPoller

            mq = self.mqtt
            if mq is not None:
                mq.polled.update({d.name: d.interval_s for d in cfg.modbus.device_settings()})
            self.modbus = ModbusPoller(cfg.modbus, self._on_wired_measurement, clock=self.clock.now,
                                       on_status=None if mq is None else lambda st: mq.set_meter_available(st.name,
                                                                                                           st.ok))
            self._modbus_task = asyncio.ensure_future(self.modbus.run())

    async def refresh_network_limits(self) -> None:
        """Compute the feeder's network limits from the [grid] model with
        the roster's members placed (their records' connection points) and
        install them in the market's rules. The power flows take seconds, so
        they run in a thread; an unchanged network and placement is cached."""
        members = [] if self.membership is None else list(self.membership.roster.members(self.clock.now()).values())
        limits = await asyncio.to_thread(self.config.grid.limits, members)
        self.config.market.use_network(limits)
        log.info("grid: network limits %s for %d placed members", limits.digest.hex()[:16] if limits else None,
                 len(members))

    async def _grid_loop(self, every_s: float = 900.0) -> None:
        # Admissions and revocations move households on and off the model.
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.refresh_network_limits()
            except Exception:  # noqa: BLE001 - keep the last limits; a bad model must not stop the market
                log.exception("grid: recomputing the network limits failed; the previous ones stay in force")

    async def _start_batteries_and_chargers(self) -> None:
        cfg = self.config
        if cfg.battery.units or cfg.ocpp.enabled:
            from .devices.service import DeviceService

            # Charger meter values are stored, as sub-meters unless a charger has
            # its own connection: the house meter already counts what the car draws.
            on_measurement = None
            if cfg.ocpp.enabled:
                from .devices.charger_metering import ChargerMetering

                self.charger_metering = ChargerMetering(self.store, cfg.ocpp)
                on_measurement = self.charger_metering.record
            self.devices = await DeviceService(cfg.battery, cfg.modbus, cfg.ocpp, clock=self.clock.now,
                                               secrets_dir=Path(cfg.store.path).resolve().parent,
                                               on_measurement=on_measurement).start()

    def connection_device_ids(self) -> list[str]:
        """The stored devices whose energy is the household's at its grid
        connection: settlement and the planner's load history (charger
        sub-meters left out, devices/charger_metering.py)."""
        ids = [d.device_id for d in self.store.devices()]
        return ids if self.charger_metering is None else self.charger_metering.settled(ids)

    async def _retention_loop(self, every_s: float = 3600.0) -> None:
        from .store.retention import RetentionPolicy, apply_retention

        st = self.config.store
        policy = RetentionPolicy(st.retention_raw_days, st.retention_hourly_days)
        while True:
            try:
                apply_retention(self.db, self.clock.now(), policy)
            except Exception:  # noqa: BLE001 - a full disk must not stop ingestion
                log.exception("retention run failed; will retry")
            await asyncio.sleep(every_s)

    def _on_wired_measurement(self, m: Any) -> None:
        if m.import_wh is None and m.export_wh is None:
            return
        extra = {k: v for k, v in (("current", m.current_a), ("frequency", m.frequency_hz),
                                   ("power_factor", m.power_factor)) if v is not None}
        device_id = f"modbus-{m.device}"
        last = self.store.last_reading(device_id)
        imp = m.import_wh if m.import_wh is not None else (last["import_wh"] if last else 0)
        exp = m.export_wh if m.export_wh is not None else (last["export_wh"] if last else 0)
        self.store.insert_measurement(device_id, m.device, m.t, imp, exp, m.power_w, m.voltage_v, extra, m.source)
        if self.mqtt is not None:
            self.mqtt.publish_meter(m)

    def start_trading(self) -> None:
        if self.trading is not None and self._trading_task is None:
            self._trading_task = asyncio.ensure_future(self.trading.run(self._stop_trading))

    async def stop_trading(self) -> None:
        """Stop placing orders and paying; open channels stay as they are."""
        self._stop_trading.set()
        if self._trading_task is not None:
            self._trading_task.cancel()
            await asyncio.gather(self._trading_task, return_exceptions=True)
            self._trading_task = None

    async def stop(self) -> None:
        await self.notifier.stop()
        if self.web is not None:
            await self.web.stop()
        if self.openadr is not None:
            await self.openadr.stop()
            self.openadr = None
        if self.planner is not None:
            await self.planner.stop()
            self.planner = None
        await self.stop_trading()
        if self.updates is not None:
            await self.updates.stop()
        if self._lifecycle_task is not None:
            self._stop_lifecycle.set()
            self._lifecycle_task.cancel()
            await asyncio.gather(self._lifecycle_task, return_exceptions=True)
            self._lifecycle_task = None
        if self._membership_task is not None:
            self._stop_membership.set()
            self._membership_task.cancel()
            await asyncio.gather(self._membership_task, return_exceptions=True)
            self._membership_task = None
        if self.membership_sync is not None:
            self.membership_sync.stop()
        for task in (self._retention_task, self._log_report_task, self._relay_watch):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._grid_task is not None:
            self._grid_task.cancel()
            await asyncio.gather(self._grid_task, return_exceptions=True)
        if self.devices is not None:
            await self.devices.stop()
        if self._modbus_task is not None:
            self.modbus.stop()
            self._modbus_task.cancel()
            await asyncio.gather(self._modbus_task, return_exceptions=True)
            self.modbus.close()
        if self.mqtt is not None:
            self.mqtt.stop(flush_timeout_s=2.0)
        if self.gpio is not None:
            self.gpio.close()
        if self.overlay is not None and self.overlay.running and self.config.overlay.enabled:
            await self.overlay.stop()
        await self.console_server.stop()
        if self.context is not None:
            await self.context.shutdown()
            self.context = None
        self.link.close()
        self.db.close()
        log.info("coordinator stopped; %d readings stored", self.ingest.counts["stored"])


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set); shut down cleanly:
    every reading acknowledged so far is already committed."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    coordinator = Coordinator(config)
    await coordinator.start()
    print(f"READY coap://{config.coap.host}:{config.coap.port}/readings", flush=True)
    try:
        await stop.wait()
    finally:
        await coordinator.stop()
