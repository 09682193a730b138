"""A neighbourhood on one machine: coordinators, meters, one simulated clock.

Each coordinator is a full `Coordinator` (its own database, CoAP port,
console, identity key, wallet, channel store and OpenDHT node) running in
this process; each meter is provisioned with `microgrid flash` into a folder
and booted in its own `micropython` process, sending signed readings over
loopback CoAP to its coordinator. Channel transactions go to one local
ledger, the zone's stand-in for the BSV network. Everything follows one `ScaledClock`: the
meters get the same start, speed and real-time origin in their config.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microgrid.coordinator.app import Coordinator
from microgrid.coordinator.clock import ScaledClock
from microgrid.coordinator.config import ChannelsSettings, Config
from microgrid.coordinator.devices.gpio_settings import GpioSettings
from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.overlay.settings import OverlaySettings
from microgrid.flash.unix_port import boot
from microgrid.processes import free_udp_port

log = logging.getLogger("microgrid.demo")

NAMES = ["alder", "birch", "cedar", "dogwood", "elm", "fir", "ginkgo", "hazel", "ivy", "juniper",
         "larch", "maple", "oak", "pine", "rowan", "spruce", "willow", "yew", "aspen", "beech"]
INSTALLER_TOKEN = "demo-installer-token"
DEMO_NETWORK_ID = 0x4D47444D  # "MGDM": a private overlay network for demos
READING_INTERVAL_S = 60.0  # simulated seconds between readings
DAY = 86400

# Limits that keep a run inside a 2-core machine (stated in --help).
MAX_COORDINATORS = 8
MAX_METERS = 40
MAX_DAYS = 7


@dataclass
class MeterPlan:
    name: str
    profile: str
    seed: int
    solar_peak_w: int
    base_load_w: int
    device_id: str = ""
    image: Path | None = None
    process: subprocess.Popen | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class CoordinatorPlan:
    name: str
    index: int
    port: int
    directory: Path
    meters: list[MeterPlan] = field(default_factory=list)
    coordinator: Coordinator | None = None
    overlay_port: int = 0


def plan_neighbourhood(out_dir: Path, coordinators: int, meters: int, seed: int) -> list[CoordinatorPlan]:
    """Who is who: deterministic in `seed`. Coordinators alternate between
    households with rooftop solar (sellers at noon) and without (buyers),
    so the market has both sides."""
    rng = random.Random(seed)
    plans = [CoordinatorPlan(NAMES[i], i, free_udp_port(), out_dir / NAMES[i]) for i in range(coordinators)]
    for m in range(meters):
        c = plans[m % coordinators]
        sunny = c.index % 2 == 0
        first = not c.meters
        if first and sunny:
            profile, peak, base = "solar", rng.choice([3000, 4000, 5000, 6000]), 0
        elif sunny:
            profile, peak, base = "prosumer", rng.choice([1500, 2500]), rng.choice([200, 300, 400])
        else:
            profile, peak, base = "load", 0, rng.choice([250, 350, 450, 600])
        c.meters.append(MeterPlan(f"{c.name}-m{len(c.meters) + 1}", profile, seed * 1000 + m, peak, base))
    return plans


class Neighbourhood:
    def __init__(self, out_dir: Path, coordinators: int, meters: int, days: float, seed: int, speed: float,
                 start: float, increment_wh: int = 10) -> None:
        self.increment_wh = increment_wh
        self.ledger: Any = None
        self.out_dir = out_dir
        self.days = days
        self.seed = seed
        self.speed = speed
        self.sim_start = start
        self.plans = plan_neighbourhood(out_dir, coordinators, meters, seed)
        self.clock: ScaledClock | None = None
        self.stopped_early = False

    @property
    def sim_end(self) -> float:
        return self.sim_start + self.days * DAY

    def all_meters(self) -> list[MeterPlan]:
        return [m for c in self.plans for m in c.meters]

    def coordinator_config(self, c: CoordinatorPlan) -> Config:
        """Every coordinator of the zone shares the market rules; prices
        differ: households with solar sell cheaply, the others bid up to just
        under the utility's import tariff."""
        config = Config()
        config.coap.host = "127.0.0.1"
        config.coap.port = c.port
        config.store.path = str(c.directory / "coordinator.db")
        config.log.level = "warning"
        config.ingest.installer_token = INSTALLER_TOKEN
        # Meters' clocks start at their own boot, up to a few hundred
        # simulated seconds apart at this speed.
        config.ingest.max_future_s = 900
        config.overlay = OverlaySettings(
            enabled=True, network_id=DEMO_NETWORK_ID, port=c.overlay_port, bind4="127.0.0.1", bind6="::1",
            bootstrap=[] if c.index == 0 else [f"127.0.0.1:{self.plans[0].overlay_port}"],
            peer_rate_limit=-1, rate_limit=-1, maintain_storage=False, get_timeout_s=0.5, put_timeout_s=1.0,
            stop_timeout_s=1.0,
        )
        sunny = any(m.solar_peak_w for m in c.meters)
        config.market = MarketSettings(
            enabled=True, zone="demo-street", interval_s=900, gate_lead_s=600, order_lead_s=1800,
            import_tariff_sat_per_kwh=250, export_tariff_sat_per_kwh=40, operator="demo-street-feeder",
            prices={"sell": 60 + 10 * c.index, "buy": 200 - 5 * c.index} if sunny
            else {"sell": 240, "buy": 220 - 5 * c.index},
        )
        config.channels = ChannelsSettings(
            enabled=True, wallet_path="wallet.json", wallet_password_file="wallet.password",
            chain="local:ledger.db", capacity_sat=5_000_000, lock_s=3 * 86400 + int(self.days * DAY),
            increment_wh=self.increment_wh, settle_delay_s=120, export_relay="relay_1",
            # The street's coordinators are each other's neighbours.
            allowed_peers=[k for k in self.peer_keys if k != self.peer_keys[c.index]],
        )
        # Each household's export contactor, on the simulated GPIO backend
        # (every switch journalled): a seller opens it on a buyer that falls
        # more than channels.credit_sat behind.
        config.gpio = GpioSettings(backend="simulated", leds=False, journal=str(c.directory / "gpio.jsonl"),
                                   relays={"relay_1": {"safe_state": "connected"}})
        # The street's zone, founded at start (found_zone): only its members trade.
        config.zone = dataclasses.replace(self.zone, cache_path=str(c.directory / "zone-cache.cbor"))
        return config.validate()

    def found_zone(self) -> None:
        """Found the demo's zone (3 admins, 2 must sign) and admit every
        coordinator, each on its own connection point of one feeder."""
        from microgrid.coordinator.membership.install import found_and_admit

        members = [(bytes.fromhex(k), f"demo-street-{c.name}", "demo-feeder")
                   for k, c in zip(self.peer_keys, self.plans)]
        # Issued a year back: the coordinators start while the scaled clock,
        # not yet started, still shows a time long before sim_start.
        self.zone = found_and_admit(self.out_dir / "zone", "demo-street", members, int(self.sim_start) - 365 * DAY,
                                    int(self.sim_end) + 30 * DAY)
        # The members are all in the records folder; the board is read now and then.
        self.zone.refresh_s = 3600

    def fund_wallet(self, c: CoordinatorPlan, config: Config, sats: int) -> Any:
        from microgrid.coordinator.channels.wallet import Utxo, Wallet

        password = "demo-" + c.name
        pw_file = config.resolve(config.channels.wallet_password_file)
        pw_file.write_text(password + "\n")
        pw_file.chmod(0o600)
        wallet = Wallet.create(config.resolve(config.channels.wallet_path), password,
                               fee_rate=config.channels.fee_rate_sat_per_kb)
        index, script = wallet.receive_script()
        assert self.ledger is not None
        wallet.add_utxo(Utxo(self.ledger.faucet(script, sats), sats, index))
        wallet.save()
        return wallet

    async def start(self) -> None:
        from microgrid.coordinator.channels.chain import LocalLedger

        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Provisional: the clock's origin is set when the meters boot.
        self.clock = ScaledClock(self.sim_start, self.speed, time.time() + 3600)
        # The zone's local ledger: every channel transaction goes through it
        # and its script interpreter.
        self.ledger = LocalLedger(str(self.out_dir / "ledger.db"), clock=self.clock)
        from microgrid.coordinator.app import load_or_create_key

        self.peer_keys: list[str] = []
        for c in self.plans:
            c.directory.mkdir(parents=True, exist_ok=True)
            c.overlay_port = free_udp_port()
            # Keys first: each coordinator admits channels from the others only.
            key = load_or_create_key(c.directory / "coordinator.key")
            self.peer_keys.append(key.public_key.to_hex(compressed=True))
        self.found_zone()
        for c in self.plans:
            config = self.coordinator_config(c)
            wallet = self.fund_wallet(c, config, 20_000_000)
            coordinator = Coordinator(config, clock=self.clock, chain=self.ledger, wallet=wallet)
            await coordinator.start(defer_trading=True)
            c.coordinator = coordinator
        readings_per_meter = int(self.days * DAY / READING_INTERVAL_S)
        # Each meter is provisioned as an installer would: `microgrid flash`
        # into a folder (compiled image, key made on the "board" by the unix
        # port, registration with the coordinator's installer token).
        jobs = []
        for c in self.plans:
            for m in c.meters:
                meter_cfg = {
                    "interval_s": READING_INTERVAL_S / self.speed,
                    "clock_start": self.sim_start,
                    "clock_speed": self.speed,
                    "max_readings": readings_per_meter,
                    "ack_timeout_s": 0.5,
                    "retry_after_s": 0.5,
                    "drain_timeout_s": 30,
                    "outbox_size": 4096,
                    "persist_every": 60,
                    "meter": {"type": "simulated", "profile": m.profile, "seed": m.seed,
                              "solar_peak_w": m.solar_peak_w, "base_load_w": m.base_load_w},
                }
                jobs.append(asyncio.to_thread(self._flash, c, m, meter_cfg))
        for i in range(0, len(jobs), 4):
            await asyncio.gather(*jobs[i:i + 4])
        # Simulated time starts now, for the coordinators and (each from its
        # own boot, a few milliseconds apart) for the meters.
        self.clock.origin = time.time()
        for c in self.plans:
            for m in c.meters:
                assert m.image is not None
                m.process = boot(m.image, stdout=open(c.directory / f"{m.name}.log", "w"))
        for c in self.plans:
            assert c.coordinator is not None
            c.coordinator.start_trading()

    def _flash(self, c: CoordinatorPlan, m: MeterPlan, meter_cfg: dict[str, Any]) -> None:
        import io

        from microgrid.flash.flow import Flasher, FlashRequest
        from microgrid.flash.transfer import FolderTarget

        cfg_file = c.directory / f"{m.name}.json"
        cfg_file.write_text(json.dumps(meter_cfg))
        out = io.StringIO()
        image = c.directory / m.name
        result = Flasher(FlashRequest(target=FolderTarget(image), config_file=str(cfg_file), name=m.name,
                                      coordinator=f"127.0.0.1:{c.port}", token=INSTALLER_TOKEN), out).run()
        (c.directory / f"{m.name}.flash.log").write_text(out.getvalue())
        m.device_id = result.device_id
        m.image = image

    def counts(self) -> dict[str, int]:
        stored = sum(c.coordinator.ingest.counts["stored"] for c in self.plans if c.coordinator)
        rejected = sum(c.coordinator.ingest.counts["rejected"] for c in self.plans if c.coordinator)
        running = sum(1 for m in self.all_meters() if m.process and m.process.poll() is None)
        traders = [c.coordinator.trading for c in self.plans if c.coordinator and c.coordinator.trading]
        trades = max((len(t.stats.cleared) and sum(len(x.trades) for x in t.stats.cleared.values())
                      for t in traders), default=0)
        updates = sum(t.stats.payment_updates for t in traders)
        return {"meters": running, "readings": stored, "rejected": rejected, "trades": trades, "payments": updates}

    async def run(self, progress: Any = None, tick_s: float = 0.25) -> None:
        """Until every meter has finished (or the run is cancelled)."""
        assert self.clock is not None
        hard_deadline = time.time() + (self.days * DAY / self.speed) * 1.5 + 60
        while True:
            if progress is not None:
                progress.update(min(self.clock.now(), self.sim_end), self.counts())
            if all(m.process is None or m.process.poll() is not None for m in self.all_meters()):
                break
            if time.time() > hard_deadline:
                log.warning("meters still running past the deadline; stopping them")
                break
            await asyncio.sleep(tick_s)

    async def stop(self) -> None:
        for m in self.all_meters():
            p = m.process
            if p is not None and p.poll() is None:
                self.stopped_early = True
                p.terminate()
        for m in self.all_meters():
            p = m.process
            if p is None:
                continue
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            m.summary = _meter_summary(self.out_dir, m)
        # Sellers close the channels paying them: the settlement
        # transactions go to the ledger, checked by its script interpreter.
        self.closed_channels = []
        for c in self.plans:
            if c.coordinator is not None:
                await c.coordinator.stop_trading()
        for c in self.plans:
            if c.coordinator is not None and c.coordinator.trading is not None:
                try:
                    self.closed_channels += await asyncio.wait_for(c.coordinator.trading.close_incoming(), 30)
                except asyncio.TimeoutError:
                    log.warning("closing %s's channels timed out", c.name)
        for c in self.plans:
            if c.coordinator is not None:
                await c.coordinator.stop()


def _meter_summary(out_dir: Path, m: MeterPlan) -> dict[str, Any]:
    assert m.image is not None
    log_file = m.image.parent / f"{m.name}.log"
    try:
        lines = log_file.read_text().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        if line.startswith("SUMMARY "):
            return dict(json.loads(line[len("SUMMARY "):]))
    return {}
