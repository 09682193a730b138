"""A neighbourhood on one machine: coordinators, meters, one simulated clock.

Each coordinator is a full `Coordinator` (its own database, CoAP port,
console, identity key, wallet, channel store and OpenDHT node) running in
this process; each meter is provisioned with `microgrid flash` into a folder
and booted in its own `micropython` process, sending signed readings over
loopback CoAP to its coordinator. Channel transactions go to one local
ledger, the zone's stand-in for the BSV network. Everything follows one
simulated clock, the conductor's (microgrid/conductor.py): it moves on only
when every coordinator and every meter has done what the instant asks, so
the same seed gives the same trades however loaded the machine is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import logging
import random
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from microgrid.coordinator.app import Coordinator
from microgrid.conductor import METER_SHIM, Conductor
from microgrid.coordinator.config import ChannelsSettings, Config
from microgrid.coordinator.devices.gpio_settings import GpioSettings
from microgrid.coordinator.market.settings import MarketSettings
from microgrid.coordinator.overlay.settings import OverlaySettings
from microgrid.coordinator.secrets import write_new_secret_file
from microgrid.flash.unix_port import find_micropython, recorded_interpreter
from microgrid.processes import free_udp_port

log = logging.getLogger("microgrid.demo")

NAMES = ["alder", "birch", "cedar", "dogwood", "elm", "fir", "ginkgo", "hazel", "ivy", "juniper",
         "larch", "maple", "oak", "pine", "rowan", "spruce", "willow", "yew", "aspen", "beech"]
INSTALLER_TOKEN = "demo-installer-token"
DEMO_NETWORK_ID = 0x4D47444D  # "MGDM": a private overlay network for demos
READING_INTERVAL_S = 60.0  # simulated seconds between readings
DAY = 86400
SETTLE_DELAY_S = 120

# Limits that keep a run inside a 2-core machine (stated in --help).
MAX_COORDINATORS = 8
MAX_METERS = 40
MAX_DAYS = 365
# Past a week, a reading (and a stream payment) every 5 minutes instead of
# every minute: a month then takes CPU time a 2-core machine can give.
LONG_RUN_DAYS = 7
LONG_RUN_READING_S = 300


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
    power_cuts: int = 0


@dataclass
class CoordinatorPlan:
    name: str
    index: int
    port: int
    directory: Path
    meters: list[MeterPlan] = field(default_factory=list)
    coordinator: Coordinator | None = None
    overlay_port: int = 0
    config: Config | None = None
    stored_before: int = 0  # readings stored by instances before a restart
    rejected_before: int = 0


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
    def __init__(self, out_dir: Path, coordinators: int, meters: int, days: float, seed: int,
                 speed: float | None, start: float, increment_wh: int = 10, incidents: bool = False) -> None:
        self.increment_wh = increment_wh
        self.ledger: Any = None
        self.out_dir = out_dir
        self.days = days
        self.seed = seed
        self.speed = speed
        self.sim_start = start
        self.plans = plan_neighbourhood(out_dir, coordinators, meters, seed)
        # Simulated time; `speed` (simulated s per real s) is only a ceiling.
        # Meters run up to 10 min ahead of the coordinators (ingest.max_future_s is 15).
        self.conductor = Conductor(start, ceiling_speed=speed, lookahead_s=600)
        self.clock = self.conductor.clock()
        self.stopped_early = False
        self._housekeeping: list[asyncio.Task[None]] = []
        self.timings: dict[str, float] = {}
        self.reading_s = READING_INTERVAL_S if days <= LONG_RUN_DAYS else float(LONG_RUN_READING_S)
        from .incidents import plan_incidents

        self.incidents = plan_incidents(seed, start, days, [c.name for c in self.plans],
                                        [m.name for m in self.all_meters()], int(self.reading_s)) if incidents else []
        self.incident_log: list[dict[str, Any]] = []
        # Trading services of coordinators since restarted (stopped): their
        # counts before the restart.
        self.retired_traders: list[Any] = []
        self.incident_failures: list[str] = []  # what an incident broke (the run then fails)
        self._housekeeping_by: dict[str, asyncio.Task[None]] = {}

    @property
    def sim_end(self) -> float:
        return self.sim_start + self.days * DAY

    @property
    def run_until(self) -> float:
        """Until the interval the meters stop in is settled and paid: its
        end, plus the two settle delays and a minute. (Intervals cleared
        after that carry no energy: nothing is owed for them.)"""
        step = 900
        last_end = -(-int(self.sim_end) // step) * step
        return last_end + 2 * SETTLE_DELAY_S + 60

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
            # Generous: a get cut short would change the book; the conductor
            # waits for it instead (only a lost node makes these count).
            peer_rate_limit=-1, rate_limit=-1, maintain_storage=False, get_timeout_s=10.0, put_timeout_s=10.0,
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
            # Channels live a week, as on a real street: a longer run rolls
            # over to new ones (trading/rollover.py) and closes the old.
            chain="local:ledger.db", capacity_sat=5_000_000, lock_s=7 * 86400,
            stream_poll_s=int(self.reading_s),
            # Channel lifecycle checks: every 5 min, or 15 past a week (the
            # close margin is 3 h: still tried several times).
            lifecycle_every_s=300 if self.days <= LONG_RUN_DAYS else 900,
            increment_wh=self.increment_wh, settle_delay_s=SETTLE_DELAY_S, export_relay="relay_1",
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
        # From the seed, so two runs fund the same outputs.
        wallet = seeded_wallet(config.resolve(config.channels.wallet_path), password,
                               f"microgrid-demo/{self.seed}/{c.name}/wallet",
                               fee_rate=config.channels.fee_rate_sat_per_kb)
        index, script = wallet.receive_script()
        assert self.ledger is not None
        wallet.add_utxo(Utxo(self.ledger.faucet(script, sats), sats, index))
        wallet.save()
        return wallet

    async def start(self) -> None:
        from microgrid.coordinator.channels.chain import LocalLedger

        self.out_dir.mkdir(parents=True, exist_ok=True)
        await self.conductor.open_gate()
        # The zone's local ledger: every channel transaction goes through it
        # and its script interpreter.
        self.ledger = LocalLedger(str(self.out_dir / "ledger.db"), clock=self.clock)
        from microgrid.coordinator.app import load_or_create_key

        self.peer_keys: list[str] = []
        for c in self.plans:
            c.directory.mkdir(parents=True, exist_ok=True)
            c.overlay_port = free_udp_port()
            # Keys first: each coordinator admits channels from the others
            # only. From the seed: orders' hashes (and so the clearing's
            # ties) depend on who signs them.
            key_file = c.directory / "coordinator.key"
            if not key_file.exists():
                secret = hashlib.sha256(f"microgrid-demo/{self.seed}/{c.name}/identity".encode()).hexdigest()
                write_new_secret_file(key_file, secret + "\n")
            key = load_or_create_key(key_file)
            self.peer_keys.append(key.public_key.to_hex(compressed=True))
        self.found_zone()
        for c in self.plans:
            config = self.coordinator_config(c)
            wallet = self.fund_wallet(c, config, 20_000_000)
            coordinator = self._coordinator(c, config, wallet)
            await coordinator.start(defer_trading=True)
            c.coordinator = coordinator
            c.config = config
            self._conduct(c)
        readings_per_meter = int(self.days * DAY / self.reading_s)
        # Each meter is provisioned as an installer would: `microgrid flash`
        # into a folder (compiled image, key made on the "board" by the unix
        # port, registration with the coordinator's installer token).
        jobs = []
        for c in self.plans:
            for m in c.meters:
                # The meter's time is the scripted HAL's virtual time, which
                # moves only as the conductor grants: seconds here are
                # simulated seconds.
                meter_cfg = {
                    "interval_s": self.reading_s,
                    "clock_start": self.sim_start,
                    "clock_speed": 1,
                    "max_readings": readings_per_meter,
                    "ack_timeout_s": 2,
                    "retry_after_s": 2,
                    "drain_timeout_s": 600,
                    "outbox_size": 4096,
                    "persist_every": 60,
                    "meter": {"type": "simulated", "profile": m.profile, "seed": m.seed,
                              "solar_peak_w": m.solar_peak_w, "base_load_w": m.base_load_w},
                }
                jobs.append(asyncio.to_thread(self._flash, c, m, meter_cfg))
        t0 = time.monotonic()
        for i in range(0, len(jobs), 4):
            await asyncio.gather(*jobs[i:i + 4])
        t1 = time.monotonic()
        await self._overlay_joined()
        self.timings["flash_s"] = t1 - t0
        self.timings["overlay_join_s"] = time.monotonic() - t1
        # Simulated time starts with the meters' boot (virtual 0 is
        # sim_start for each) and the coordinators' trading.
        for c in self.plans:
            for m in c.meters:
                assert m.image is not None
                m.process = self._boot(m, c.directory / f"{m.name}.log")
                self.conductor.add_meter(m.name, _alive(m.process))
        for c in self.plans:
            assert c.coordinator is not None
            c.coordinator.start_trading()
        for inc in self.incidents:
            self.conductor.barriers += [inc.at, inc.at + inc.outage_s]
            self._housekeeping.append(asyncio.ensure_future(self._incident(inc)))

    async def _incident(self, inc: Any) -> None:
        """Carry out one scripted incident at its simulated time, and
        record what it did (one entry of `incident_log` each; its `what`
        says it in words)."""
        sleep = self.conductor.sleeper(len(self.plans))  # after the coordinators' own work of that instant
        await sleep(inc.at - self.clock.now())
        if inc.kind == "restart":
            await self._restart_incident(inc, sleep)
        else:
            await self._power_cut_incident(inc, sleep)

    async def _restart_incident(self, inc: Any, sleep: Any) -> None:
        c = [c for c in self.plans if c.name == inc.target][0]
        entry: dict[str, Any] = {"at": inc.at, "kind": inc.kind, "target": inc.target, "what": inc.describe()}
        self.incident_log.append(entry)
        try:
            async with self.conductor.busy():
                await self._restart(c)
        except Exception as e:  # noqa: BLE001 - shown in the summary, fails the run
            log.exception("restarting coordinator %s failed", c.name)
            self.incident_failures.append(f"restart of {c.name}: {e}")
            entry["what"] = f"coordinator {c.name} failed to restart: {e}"
            return
        co = c.coordinator
        assert co is not None
        node = co.trading.node if co.trading is not None else None
        # Reloaded from the channel store by the new instance: open ones
        # go on carrying payments. What they carry from now on is counted
        # at the end (`finish_incidents`).
        entry["channels_resumed"] = len(node.open_channels()) if node is not None else 0
        entry["signed_at_restart_sat"] = _signed_sat(node)
        entry["found_by"], entry["of"] = None, len(self.plans) - 1
        # A reading later: every other coordinator finds the address the
        # restarted one announced since (not the record from before), and
        # the new instance has picked up what was in flight.
        await sleep(self.reading_s)
        async with self.conductor.busy():
            found = await self._directory_found(c, since=inc.at)
        entry["found_by"] = found
        entry["intervals_picked_up"] = len(co.trading.stats.picked_up) if co.trading is not None else 0
        if found < entry["of"]:
            self.incident_failures.append(f"directory record of {c.name} found by {found} of {entry['of']}")
        entry["what"] = self._restart_words(c, entry)

    def _restart_words(self, c: CoordinatorPlan, entry: dict[str, Any]) -> str:
        words = (f"coordinator {c.name} restarted: {entry['channels_resumed']} open channel(s) reloaded from its "
                 f"store, {entry.get('intervals_picked_up', 0)} interval(s) in flight picked up, its new directory "
                 f"record found by {entry['found_by']} of {entry['of']} neighbours")
        if "moved_after_sat" in entry:
            words += f"; {entry['moved_after_sat']:,} sat paid or received on its channels after"
        return words

    async def _power_cut_incident(self, inc: Any, sleep: Any) -> None:
        m = [m for m in self.all_meters() if m.name == inc.target][0]
        c = [c for c in self.plans if m in c.meters][0]
        entry: dict[str, Any] = {"at": inc.at, "kind": inc.kind, "target": inc.target, "what": inc.describe(),
                                 "outage_s": inc.outage_s}
        async with self.conductor.busy():
            if m.process is None or m.process.poll() is not None:
                return
            # What the coordinator had stored of it: anything newer was
            # still on the meter's flash, waiting for an acknowledgement.
            entry["stored_seq_at_cut"] = self._stored_seq(c, m)
            m.process.kill()
            m.process.wait()
            m.power_cuts += 1
        self.incident_log.append(entry)
        await sleep(inc.outage_s)
        async with self.conductor.busy():
            self._power_on(m, self.clock.now())
        entry["power_back_at"] = int(self.clock.now())
        # A reading after power back: the meter has booted (its log says
        # how many readings it found waiting on flash) and sent them.
        await sleep(self.reading_s)
        async with self.conductor.busy():
            booted = _boot_line(m, m.power_cuts + 1)
            if booted is None:
                self.incident_failures.append(f"meter {m.name} did not boot after its power cut")
                entry["what"] += ": did not boot again"
                return
            next_seq, on_flash = booted
            before = entry["stored_seq_at_cut"] or 0
            # Made before the cut and not stored then: the coordinator must have them now.
            waiting = list(range(before + 1, next_seq))
            recovered = sum(1 for seq in waiting if self._has_seq(c, m, seq))
        entry.update(next_seq=next_seq, on_flash=on_flash, waiting=len(waiting), recovered=recovered,
                     not_made=inc.outage_s // int(self.reading_s))
        if recovered < len(waiting):
            self.incident_failures.append(f"meter {m.name}: {len(waiting) - recovered} reading(s) made before its "
                                          f"power cut not stored after it")
        # The journal's acknowledged mark is saved every few readings: at
        # boot the meter may send again some the coordinator already has
        # (answered "duplicate", stored once).
        again = max(on_flash - len(waiting), 0)
        entry["what"] = (f"meter {m.name} lost power for {inc.outage_s // 60} min: it booted with {on_flash} "
                         f"reading(s) on its flash not marked acknowledged and sent them ({again} the coordinator "
                         f"already had); {len(waiting)} reading(s) made before the cut were not stored yet, "
                         f"{recovered} of them are now; {entry['not_made']} reading(s) not made while off; its "
                         f"sequence went on from {next_seq}")

    def _stored_seq(self, c: CoordinatorPlan, m: MeterPlan) -> int | None:
        assert c.coordinator is not None
        return c.coordinator.store.last_seq(m.device_id)

    def _has_seq(self, c: CoordinatorPlan, m: MeterPlan, seq: int) -> bool:
        assert c.coordinator is not None
        return c.coordinator.store.stored_message(m.device_id, seq) is not None

    def finish_incidents(self) -> None:
        """At the end: what each restarted coordinator's channels carried
        after its restart (paid as buyer plus received as seller)."""
        for entry in self.incident_log:
            if entry["kind"] != "restart" or "signed_at_restart_sat" not in entry:
                continue
            c = [c for c in self.plans if c.name == entry["target"]][0]
            node = c.coordinator.trading.node if c.coordinator and c.coordinator.trading else None
            entry["moved_after_sat"] = _signed_sat(node) - entry["signed_at_restart_sat"]
            if entry.get("found_by") is not None:
                entry["what"] = self._restart_words(c, entry)

    async def _directory_found(self, c: CoordinatorPlan, since: float) -> int:
        """How many other coordinators read `c`'s directory record issued
        at or after `since` (trading/service.py re-announces it at start)."""
        from microgrid.coordinator.overlay.directory import directory_key

        assert c.coordinator is not None
        pub = c.coordinator.key.public_key.to_bytes(compressed=True)
        found = 0
        for other in self.plans:
            if other is c or other.coordinator is None or other.coordinator.overlay is None:
                continue
            recs = await other.coordinator.overlay.get(directory_key(pub.hex()), publishers=[pub])
            if any(r.issued >= since for r in recs):
                found += 1
            else:
                log.error("%s does not find %s's directory record announced since its restart", other.name, c.name)
        return found

    async def _restart(self, c: CoordinatorPlan) -> None:
        """Stop and start again from the files, as `systemctl restart`."""
        from microgrid.coordinator.channels.wallet import Wallet

        old = c.coordinator
        assert old is not None and c.config is not None
        c.stored_before += old.ingest.counts["stored"]
        c.rejected_before += old.ingest.counts["rejected"]
        task = self._housekeeping_by.pop(c.name, None)
        if task is not None:
            task.cancel()
        await old.stop()
        if old.trading is not None:
            # Its counts (trades cleared, settlements, updates) up to now:
            # the summary is the household's over the whole run.
            self.retired_traders.append(old.trading)
        # Its overlay node joins through the neighbours' nodes (the first
        # coordinator bootstraps nobody's at the start: it is the first).
        config = dataclasses.replace(c.config)
        config.overlay = dataclasses.replace(
            c.config.overlay, bootstrap=[f"127.0.0.1:{o.overlay_port}" for o in self.plans if o is not c])
        wallet = Wallet.open(config.resolve(config.channels.wallet_path), "demo-" + c.name)
        new = self._coordinator(c, config, wallet)
        await new.start(defer_trading=True)
        c.coordinator = new
        self._conduct(c)
        new.start_trading()

    def _power_on(self, m: MeterPlan, now: float) -> None:
        """Boot a meter again after a power cut: its clock set to now (the
        demo's stand-in for the RTC, SNTP or the coordinator's time) and
        the readings left in the run."""
        assert m.image is not None
        cfg_file = m.image / "config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["clock_start"] = int(now)
        cfg["max_readings"] = max(int((self.sim_end - now) // self.reading_s), 1)
        cfg_file.write_text(json.dumps(cfg))
        m.process = self._boot(m, m.image.parent / f"{m.name}.log", append=True)
        self.conductor.add_meter(m.name, _alive(m.process), boot_at=now)

    async def _overlay_joined(self, timeout_s: float = 60.0) -> None:
        """Until every coordinator's overlay node has a put confirmed by
        the others: one made before the nodes found each other waits out
        its timeout (the conductor waits with it; the result is the same,
        only later). Probed with a short timeout, then the usual one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pending = [c for c in self.plans if c.coordinator is not None and c.coordinator.overlay is not None]
        if len(pending) < 2:
            return
        while pending and loop.time() < deadline:
            still = []
            for c in pending:
                overlay = c.coordinator.overlay  # type: ignore[union-attr]
                usual = overlay.settings.put_timeout_s
                overlay.settings.put_timeout_s = 0.5
                try:
                    if not await overlay.put_raw(f"mg/demo/joined/{c.name}", b"1", 600):
                        still.append(c)
                finally:
                    overlay.settings.put_timeout_s = usual
            pending = still
            if pending:
                await asyncio.sleep(0.2)
        if pending:
            log.warning("overlay nodes of %s not confirmed by the others within %.0f s; going on",
                        [c.name for c in pending], timeout_s)

    def _coordinator(self, c: CoordinatorPlan, config: Config, wallet: Any) -> Coordinator:
        """A coordinator on the conductor's time: its clock, and its
        market's and trading's waits parked on the conductor (in turn, by
        rank). While a gate is open the market re-reads the overlay every
        300 clock seconds (0.05 s suits a wall clock, not a stepped one);
        book repair waits as long (market/service.py)."""
        return Coordinator(config, clock=self.clock, chain=self.ledger, wallet=wallet,
                           sleep=self.conductor.sleeper(c.index), market_poll_s=300.0)

    def _conduct(self, c: CoordinatorPlan) -> None:
        """Put a started coordinator's network requests on the conductor
        (counted as busy), and its periodic housekeeping (channel
        lifecycle, retention) in simulated time instead of the wall
        clock's. (Its market and trading sleep on the conductor from the
        start: `_coordinator`.)"""
        co = c.coordinator
        assert co is not None
        cond = self.conductor
        sleep = cond.sleeper(c.index)
        if co.overlay is not None:
            cond.wrap(co.overlay, "put", "get")
        if co.trading is not None:
            client = co.trading.payer.client
            client.timeout = 120.0
            cond.wrap(client, "send")
        for attr in ("_lifecycle_task", "_retention_task"):
            task = getattr(co, attr, None)
            if task is not None:
                task.cancel()
        co._lifecycle_task = None
        task = asyncio.ensure_future(self._housekeep(c, sleep))
        self._housekeeping.append(task)
        self._housekeeping_by[c.name] = task

    async def _housekeep(self, c: CoordinatorPlan, sleep: Any) -> None:
        from microgrid.coordinator.store.retention import RetentionPolicy, apply_retention

        co = c.coordinator
        assert co is not None
        every = co.channel_lifecycle.settings.every_s if co.channel_lifecycle is not None else 300.0
        st = co.config.store
        policy = RetentionPolicy(st.retention_raw_days, st.retention_hourly_days)
        next_retention = self.sim_start + DAY
        while True:
            await sleep(every)
            async with self.conductor.busy():
                if co.channel_lifecycle is not None:
                    try:
                        await co.channel_lifecycle.tick()
                    except Exception:  # noqa: BLE001 - as the coordinator's own loop: log, go on
                        log.exception("channel lifecycle tick of %s failed", c.name)
                if self.clock.now() >= next_retention:
                    next_retention += DAY
                    apply_retention(co.db, self.clock.now(), policy)

    def _boot(self, m: MeterPlan, log_file: Path, append: bool = False) -> subprocess.Popen:
        """Boot the image through the conductor's shim (virtual time, steps
        asked for over UDP); otherwise as `flash.unix_port.boot`."""
        assert m.image is not None
        (m.image / "hal_script.json").write_text(json.dumps({"virtual_time": True}))
        (m.image / "demo_main.py").write_text(METER_SHIM % {"name": m.name, "port": self.conductor.port})
        env = dict(os.environ)
        env["MICROPYPATH"] = ".frozen:" + str(m.image.resolve())
        binary = recorded_interpreter(m.image) or find_micropython()
        return subprocess.Popen([binary, "demo_main.py"], cwd=str(m.image), env=env,
                                stdout=open(log_file, "a" if append else "w"), stderr=subprocess.STDOUT, text=True)

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
        stored = sum(c.stored_before + c.coordinator.ingest.counts["stored"] for c in self.plans if c.coordinator)
        rejected = sum(c.rejected_before + c.coordinator.ingest.counts["rejected"] for c in self.plans if c.coordinator)
        running = sum(1 for m in self.all_meters() if m.process and m.process.poll() is None)
        traders = [c.coordinator.trading for c in self.plans if c.coordinator and c.coordinator.trading]
        trades = max((len(t.stats.cleared) and sum(len(x.trades) for x in t.stats.cleared.values())
                      for t in traders), default=0)
        updates = sum(t.stats.payment_updates for t in traders)
        return {"meters": running, "readings": stored, "rejected": rejected, "trades": trades, "payments": updates}

    async def run(self, progress: Any = None) -> None:
        """Until the last interval is settled (or the run is cancelled)."""
        def step(now: float) -> None:
            if progress is not None:
                progress.update(min(now, self.sim_end), self.counts())

        await self.conductor.run(self.run_until, step)
        # Every meter has made its readings by now; let them drain and end.
        for m in self.all_meters():
            p = m.process
            if p is not None:
                try:
                    await asyncio.wait_for(asyncio.to_thread(p.wait), 60)
                except asyncio.TimeoutError:
                    log.warning("meter %s still running after its last reading", m.name)

    async def stop(self) -> None:
        for task in self._housekeeping:
            task.cancel()
        await asyncio.gather(*self._housekeeping, return_exceptions=True)
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
        self.conductor.close_gate()


def _signed_sat(node: Any) -> int:
    """Every satoshi signed on a channel node's channels, as payer and as payee."""
    if node is None:
        return 0
    return sum(node.signed_by_peer("payer").values()) + sum(node.signed_by_peer("payee").values())


def _boot_line(m: MeterPlan, boots: int) -> tuple[int, int] | None:
    """(next seq, readings waiting on flash) from the meter's boot line
    number `boots` in its log (edge/firmware.py: "..., next seq N, K
    buffered"); None if it has not booted that often."""
    assert m.image is not None
    try:
        text = (m.image.parent / f"{m.name}.log").read_text()
    except OSError:
        return None
    found = re.findall(r"next seq (\d+), (\d+) buffered", text)
    return (int(found[boots - 1][0]), int(found[boots - 1][1])) if len(found) >= boots else None


def _alive(proc: subprocess.Popen) -> Callable[[], bool]:
    return lambda: proc.poll() is None


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


def seeded_wallet(path: Path, password: str, seed: str, **kw: int) -> Any:
    """`Wallet.create`, from a seed instead of randomness (demo only: the
    same seed funds the same outputs, so two runs can be compared)."""
    from bitcoinx import BIP32PrivateKey, Bitcoin

    from microgrid.coordinator.channels.wallet import Wallet, encrypt_secret

    if path.exists():
        raise FileExistsError(f"{path}: exists; refusing to overwrite a wallet")
    w = Wallet(BIP32PrivateKey.from_seed(hashlib.sha256(seed.encode()).digest(), Bitcoin), **kw)
    w.path = path
    w._box = encrypt_secret(w.root.to_extended_key_string().encode(), password)
    w.save()
    return w
