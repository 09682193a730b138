"""The overlay at scale, on real OpenDHT nodes on loopback, beside raw
OpenDHT in the same run.

    python bench/bench_overlay.py lookups    [--nodes 1000] [--kill 0.25] [--lookups 1500]
    python bench/bench_overlay.py floods     [--junk 10000] [--attackers 10] [--signed 60]
    python bench/bench_overlay.py households [--households 10000] [--zone-size 100] [--verbose]
                                              (as root with iptables-legacy: bytes per node on the wire)
    python bench/bench_overlay.py            (all three, smaller: 200 nodes, 1,000 households, 2,000 junk;
                                              what run_all.py runs; --full for the figures above)

lookups: N coordinators in this process (many OpenDHT nodes per process:
each holds 4 file descriptors and 2 threads; the soft fd limit is raised to
what N needs) each publish their directory record `mg/dir/<pubhex>`. Three
phases of lookups (a random live node reads a random coordinator's record
by name, as Directory.lookup does): no churn; while `--kill` of the nodes
are killed without warning and as many join; after. Each lookup is done
three times on the same reader and key, in random order (a second get of a
key reuses the engine's search): through the overlay (verified record,
single-publisher read that ends at the newest record) and as raw OpenDHT
(`DhtRunner.get` until the search is done, and until its first value): the
overhead ratio compares them in the same conditions.

floods: the bar of issue 15 at full figures: `--junk` junk values and
`--attackers` keys x `--signed` validly signed records on every key a
coordinator reads (directory, zone members, metering, live, book, results);
every reader must find every honest record. Prints the read times.

households: `--households` households in feeder zones of `--zone-size`
under one district (coordinator/market/district.py; SPEC.md section 7), one
OpenDHT node per household as far as the hard file-descriptor limit allows
(4 per node; at 20,000: 4,936 nodes, about two households per node for
10,000), each settling coordinator (`--settlers` per zone) on a node of its
own. Each interval, every household publishes ONE round record
(coordinator/market/rounds.py: its meter total for this interval and its
signed order for the interval two on, whose book reads this round); each
settler, listening to its zone's round key from the interval's start (the
interval's clearers also to the district's keys), must see every meter
total and order of its zone (a record its listen missed is read by name
after `--listen-wait`), then cancels that listen and publishes what it
settled on (the record that ends the cancelled listens in the engine),
clears the zone's book; the zone's first settler publishes the zone's
offer, the clearers clear the district and publish result slices, and
every settler reads its slice by the clearers' names: the lots must agree
with the district's result, and the settlers of a zone on their meter
totals. Prints per interval: the settlers' success, the value bytes
they received, and the bytes each OpenDHT node sent and received on the
wire, measured by the kernel: the bench re-runs itself (as root) in a
network namespace of its own, where loopback carries its packets only, and
counts each node's UDP port with iptables (`iptables-legacy`; 'lo check'
= counted / loopback total); settler nodes and household nodes apart, and
the idle maintenance per node measured before the intervals, scaled to a
900-s interval.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bitcoinx import PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import opendht as dht  # noqa: E402

from microgrid.coordinator.overlay import OverlaySettings, records  # noqa: E402
from microgrid.coordinator.overlay.directory import directory_key, zone_key  # noqa: E402
from microgrid.coordinator.overlay.engine import Overlay, join_parked  # noqa: E402
from microgrid.coordinator.overlay.interface import BaseOverlay, ListenHandle, PeerInfo, RawSink  # noqa: E402

SEEDS = 3
FDS_PER_NODE = 4  # two UDP sockets (IPv4, IPv6) and the engine's wake-up pipe


def raise_fd_limit(nodes: int) -> int:
    """The soft RLIMIT_NOFILE this many nodes need (up to the hard limit)."""
    need = nodes * FDS_PER_NODE + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft != resource.RLIM_INFINITY and soft < need:
        sys.exit(f"{nodes} nodes need {need} file descriptors; the hard limit is {hard}: raise it "
                 f"(ulimit -Hn, or LimitNOFILE= in the service unit)")
    return int(soft)


def settings(seed_ports: list[int], **kw: Any) -> OverlaySettings:
    return OverlaySettings.loopback(bootstrap=[f"127.0.0.1:{p}" for p in seed_ports],
                                    maintain_storage=False, **kw)


async def start_nodes(n: int, spread: bool = False, seed: int = 1, **kw: Any) -> list[Overlay]:
    """`n` nodes, each bootstrapping from the first SEEDS nodes, or with
    `spread` from SEEDS nodes drawn among those started before it (as
    neighbours each configured with a few others: every node knowing the
    same three makes them first hops of a large share of all searches,
    measured 2.1-2.2 MB per interval on each at 10,000 households)."""
    rng = random.Random(seed)
    nodes: list[Overlay] = []
    for _ in range(n):
        boot = nodes[:SEEDS] if not spread or len(nodes) <= SEEDS else rng.sample(nodes, SEEDS)
        node = Overlay(PrivateKey.from_random(), settings([x.port for x in boot], **kw))
        await node.start()
        nodes.append(node)
    return nodes


def pct(values: list[float], p: float) -> float:
    v = sorted(values) or [float("nan")]
    return v[min(len(v) - 1, int(p * len(v)))]


async def raw_get(node: Overlay, key: str, first_only: bool, timeout: float = 5.0) -> tuple[float, int]:
    """Raw OpenDHT: get until done (or the first value); (seconds, values)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    count = [0]
    t0 = time.monotonic()

    def finish() -> None:
        if not fut.done():
            fut.set_result(None)

    def on_value(v: Any) -> bool:
        count[0] += 1
        if first_only:
            loop.call_soon_threadsafe(finish)
            return False
        return True

    # Awaited as the overlay's own reads are (one future, a timer; no
    # wait_for): the comparison is of the reads, not of asyncio's helpers.
    timer = loop.call_later(timeout, finish)
    node._runner.get(dht.InfoHash.get(key), on_value, lambda ok, nodes: loop.call_soon_threadsafe(finish))
    await fut
    timer.cancel()
    return time.monotonic() - t0, count[0]


# -- lookups with churn ---------------------------------------------------------------


class Phase:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ours: list[float] = []
        self.raw_done: list[float] = []
        self.raw_first: list[float] = []
        self.ok = 0
        self.done = 0
        self.retried = 0
        self.raw_ok = 0
        self.wall = 0.0

    def row(self) -> str:
        succ = 100.0 * self.ok / self.done if self.done else 0.0
        return (f"{self.name:<34}{self.done:>8}{succ:>10.2f}"
                f"{pct(self.ours, .5) * 1000:>10.1f}{pct(self.ours, .99) * 1000:>10.1f}"
                f"{pct(self.raw_done, .5) * 1000:>11.1f}{pct(self.raw_done, .99) * 1000:>11.1f}"
                f"{pct(self.raw_first, .5) * 1000:>11.1f}{pct(self.raw_first, .99) * 1000:>11.1f}")


async def run_lookups(phase: Phase, alive: list[Overlay], targets: list[bytes], count: int, concurrency: int,
                      limit_s: float, rng: random.Random) -> None:
    t0 = time.monotonic()
    remaining = [count]

    async def worker() -> None:
        while remaining[0] > 0 and time.monotonic() - t0 < limit_s:
            remaining[0] -= 1
            reader = rng.choice([n for n in alive if n.running])
            pub = rng.choice(targets)
            key = directory_key(pub.hex())
            # The three reads in random order: a second get of a key reuses
            # the engine's search (and what it found), so going first costs.
            order = ["ours", "raw", "first"]
            rng.shuffle(order)
            for what in order:
                if not reader.running:
                    break
                if what == "ours":
                    # as Directory.lookup: up to 3 reads, 50 and 100 ms apart
                    s = time.monotonic()
                    for attempt in range(3):
                        try:
                            got = await reader.get(key, publishers=[pub])
                        except Exception:
                            got = []
                        if any(r.publisher == pub and r.body == pub for r in got) or not reader.running:
                            break
                        phase.retried += 1
                        await asyncio.sleep(0.05 * (attempt + 1))
                    phase.ours.append(time.monotonic() - s)
                    phase.done += 1
                    phase.ok += any(r.publisher == pub and r.body == pub for r in got)
                else:
                    took, n = await raw_get(reader, key, what == "first")
                    (phase.raw_done if what == "raw" else phase.raw_first).append(took)
                    if what == "raw":
                        phase.raw_ok += n > 0

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.wall = time.monotonic() - t0


async def churn(alive: list[Overlay], victims: list[Overlay], seed_ports: list[int], interval_s: float) -> None:
    stopping = []
    for v in victims:
        await asyncio.sleep(interval_s)
        alive.remove(v)
        # no goodbye (maintain_storage off): to the others a crash; not
        # awaited, as a stop waits for the node's lookups in flight
        stopping.append(asyncio.create_task(v.stop()))
        node = Overlay(PrivateKey.from_random(), settings(seed_ports, stop_timeout_s=1.0))
        await node.start()
        alive.append(node)
    await asyncio.gather(*stopping)


async def lookups(args: argparse.Namespace) -> None:
    limit = raise_fd_limit(args.nodes + int(args.kill * args.nodes) + 8)
    rng = random.Random(args.seed)
    t_start = time.monotonic()
    nodes = await start_nodes(args.nodes, get_timeout_s=5.0, stop_timeout_s=1.0)
    seed_ports = [n.port for n in nodes[:SEEDS]]
    print(f"lookups: {args.nodes} nodes ({SEEDS} seeds) started in {time.monotonic() - t_start:.1f} s "
          f"(fd limit {limit}, {len(os.listdir('/proc/self/fd'))} open)")
    # Nodes started within a second know few others yet: a record put now
    # may land on nodes that are not the closest once the tables fill
    # (measured: ~0.7 % then unreachable, by raw OpenDHT as by us). As
    # Directory.run does, publish, and publish again a little later.
    await asyncio.sleep(args.settle_s)
    for _ in range(2):
        published = await asyncio.gather(*(n.put(directory_key(n.public_key.hex()), n.public_key, 3600)
                                           for n in nodes))
        await asyncio.sleep(args.settle_s)
    targets = [n.public_key for n in nodes]
    print(f"{sum(published)}/{len(nodes)} directory records confirmed stored (published twice, "
          f"{args.settle_s:.0f} s apart)")
    alive = list(nodes)
    phases = [Phase("baseline (no churn)")]
    await run_lookups(phases[0], alive, targets, args.lookups, args.concurrency, args.phase_s, rng)
    victims = rng.sample(nodes[SEEDS:], int(args.kill * args.nodes))
    phases.append(Phase(f"during churn ({len(victims)} killed+joined)"))
    churner = asyncio.create_task(churn(alive, victims, seed_ports,
                                        min(0.2, args.phase_s / (2 * max(1, len(victims))))))
    await run_lookups(phases[1], alive, targets, args.lookups, args.concurrency, args.phase_s, rng)
    await churner
    phases.append(Phase("after churn"))
    await run_lookups(phases[2], alive, targets, args.lookups, args.concurrency, args.phase_s, rng)
    print(f"\n{'phase':<34}{'lookups':>8}{'success %':>10}{'p50 ms':>10}{'p99 ms':>10}"
          f"{'raw p50':>11}{'raw p99':>11}{'raw1st p50':>11}{'raw1st p99':>11}")
    for p in phases:
        print(p.row())
    for p in phases:
        m_ours, m_raw, m_first = (statistics.mean(x) if x else float("nan") for x in (p.ours, p.raw_done, p.raw_first))
        print(f"  {p.name}: {p.retried} reads retried; raw OpenDHT found the value in "
              f"{100 * p.raw_ok / max(1, len(p.raw_done)):.2f} % of its gets")
        print(f"  {p.name}: overlay / raw OpenDHT get (until done) = {m_ours / m_raw:.2f}x mean, "
              f"{pct(p.ours, .99) / pct(p.raw_done, .99):.2f}x p99; / raw first value = {m_ours / m_first:.2f}x mean")
    await asyncio.gather(*(n.stop() for n in alive))
    print(f"total {time.monotonic() - t_start:.1f} s")


# -- floods ---------------------------------------------------------------------------


async def floods(args: argparse.Namespace) -> None:
    from microgrid.coordinator.market import book as bk
    from microgrid.coordinator.market.clearing import clear_interval
    from microgrid.coordinator.market.orders import BUY, SELL, make_order
    from microgrid.coordinator.overlay.directory import Directory
    from microgrid.coordinator.trading.exchange import LIVE_PREFIX, METERING_PREFIX

    raise_fd_limit(args.flood_nodes)
    nodes = await start_nodes(args.flood_nodes, get_timeout_s=10.0)
    honest, attacker = nodes[:3], nodes[-1]
    zone, start = "flood", (int(time.time()) // 900 + 96) * 900
    dirs = [Directory(n, {"coap": f"coap://127.0.0.1:{7000 + i}/c", "zone": zone}, ttl_s=3600, republish_s=600)
            for i, n in enumerate(honest)]
    orders = [make_order(PrivateKey.from_random(), SELL if i else BUY, zone, start, 500 + i, 100, start + 900, i,
                         int(time.time())) for i in range(3)]
    cleared = clear_interval(orders, zone, start)
    metering, live = f"{METERING_PREFIX}{zone}/{start}", f"{LIVE_PREFIX}{zone}/{start}"
    for i, n in enumerate(honest):
        await dirs[i].publish()
        await n.put(metering, b'{"export_wh": %d, "import_wh": 0}' % i, 3600)
        await n.put(live, b'{"export_wh": %d, "import_wh": 0}' % i, 3600)
        await bk.publish_order(n, orders[i], time.time())
        await bk.publish_result(n, n.publisher_id, cleared)
    for d in dirs:
        await d.members(zone)  # the readers learn who publishes
    keys = [directory_key(d.public_hex) for d in dirs] + [zone_key(zone), metering, live, bk.order_key(zone, start),
                                                          bk.result_key(zone, start)]
    pool = sorted((PrivateKey.from_random() for _ in range(20 * args.attackers)),
                  key=lambda k: k.public_key.to_bytes(compressed=True))[:args.attackers]
    t0 = time.monotonic()
    now = int(time.time())
    for key in keys:
        puts: list[tuple[bytes, str]] = [(os.urandom(60_000 if i % 100 == 0 else 40 + i % 400), os.urandom(8).hex())
                                         for i in range(args.junk)]
        for k in pool:
            tag = records.publisher_tag(k.public_key.to_bytes(compressed=True))
            puts += [(records.sign(k, key, b'{"export_wh": 1, "import_wh": 0}', now * 1000 + j, now, 3600, f"s{j}"), tag)
                     for j in range(args.signed)]
        for i in range(0, len(puts), 1000):
            await asyncio.gather(*(attacker.put_raw(key, v, 3600, t) for v, t in puts[i:i + 1000]))
    stored = len(await attacker._get_raw(metering, 30))
    print(f"floods: {len(keys)} keys x ({args.junk} junk, 1 in 100 of 60 KB, + {args.attackers} keys x "
          f"{args.signed} signed) stored in {time.monotonic() - t0:.0f} s ({stored} values under the metering key)")
    raw_t, raw_n = await raw_get(honest[0], metering, False, 60)
    print(f"  raw OpenDHT get of the metering key: {raw_n} values in {raw_t:.1f} s")
    pubs = {n.public_key for n in honest}
    for r, reader in enumerate(honest):
        t = time.monotonic()
        found = {
            "directory": sum([await dirs[r].lookup(d.public_hex, attempts=1) == d.contact for d in dirs]),
            "members": len(set(await dirs[r].members(zone)) & {p.hex() for p in pubs}),
            "metering": len({x.publisher for x in await reader.get(metering)} & pubs),
            "live": len({x.publisher for x in await reader.get(live)} & pubs),
        }
        collector = bk.BookCollector(reader, zone, start, _Clock(), 900, 300)
        await collector.fetch()
        found["book"] = len({so.hash for so in collector.orders()} & {o.hash for o in orders})
        comparison = await bk.compare_with_peers(reader, reader.publisher_id, cleared)
        found["results"] = len(comparison.agree) + 1
        print(f"  reader {r}: found of 3 each {found} in {time.monotonic() - t:.1f} s")
    await asyncio.gather(*(n.stop() for n in nodes))


class _Clock:
    def now(self) -> float:
        return time.time()


# -- households -------------------------------------------------------------------------


# Value bytes put per key in the current interval (households): what the
# nodes closest to each key store.
PUT_BYTES: dict[str, int] = {}


def stored_per_node(nodes: list[Overlay], replicas: int = 8) -> dict[int, int]:
    """port -> value bytes put this interval under the keys the node is
    among the `replicas` closest to (OpenDHT stores a value on the 8 nodes
    closest to its key: an estimate from ids and the bytes put, since
    reading a node's storage log takes its engine lock, engine.py)."""
    ids = {n.port: int(n.node_id, 16) for n in nodes}
    out = dict.fromkeys(ids, 0)
    for key, size in PUT_BYTES.items():
        h = int(str(dht.InfoHash.get(key)), 16)
        for port in sorted(ids, key=lambda p: ids[p] ^ h)[:replicas]:
            out[port] += size
    return out


class Endpoint(BaseOverlay):
    """A household's overlay endpoint hosted on a shared OpenDHT node: its
    own key and records, the host's engine; counts the value bytes it puts
    and receives."""

    def __init__(self, key: PrivateKey, host: Overlay, shards: int) -> None:
        super().__init__(key, host.clock, shards=shards)
        self.host = host
        self.sent = 0
        self.received = 0
        self.lookups: list[float] = []
        self.late = 0  # records a listen missed, read by name
        self.values = 0  # values read (gets)

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    def peers(self) -> list[PeerInfo]:
        return self.host.peers()

    async def _put_raw(self, key: str, data: bytes, ttl_s: int, tag: str) -> bool:
        self.sent += len(data)
        PUT_BYTES[key] = PUT_BYTES.get(key, 0) + len(data)
        return await self.host._put_raw(key, data, ttl_s, tag)

    async def _stream(self, key: str, tag: str | None, sink: RawSink, stop: asyncio.Event, timeout_s: float) -> None:
        def count(raw: bytes) -> None:
            self.received += len(raw)
            self.values += 1
            sink(raw)
        t0 = time.monotonic()
        await self.host._stream(key, tag, count, stop, timeout_s)
        self.lookups.append(time.monotonic() - t0)

    def _listen_raw(self, key: str, handle: ListenHandle) -> None:
        deliver = handle._deliver_raw

        def counted(raw: bytes) -> None:
            self.received += len(raw)
            deliver(raw)

        handle._deliver_raw = counted  # type: ignore[method-assign]
        self.host._listen_raw(key, handle)


def loopback_bytes() -> int:
    for line in open("/proc/net/dev"):
        if line.strip().startswith("lo:"):
            return int(line.split(":", 1)[1].split()[0])  # received = sent on loopback: count once
    return 0


# -- bytes on the wire, per node ----------------------------------------------------------
#
# Every OpenDHT node owns one UDP port (IPv4 and IPv6). Run in a network
# namespace of its own (`unshare -n`, re-executed automatically as root), the
# process's loopback carries nothing but its nodes' packets, and an
# iptables rule per port and direction counts each node's bytes sent
# (OUTPUT, source port) and received (INPUT, destination port): IP packets,
# headers included, as measured by the kernel. Rules are grouped 32 ports to
# a chain so a packet meets some 64 rules, not one per node.

IPTABLES = ("iptables-legacy", "ip6tables-legacy")


class WireCounters:
    def __init__(self, ports: list[int]) -> None:
        import shutil
        import subprocess
        self.ports: list[int] = []
        self.groups = 0
        self.available = all(shutil.which(t) and shutil.which(t + "-restore") for t in IPTABLES)
        if self.available:  # empty tables first: the namespace is ours
            payload = "\n".join(["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                                  "COMMIT", ""])
            for tool in IPTABLES:
                subprocess.run([tool + "-restore"], input=payload.encode(), check=True)
        self.add(ports)

    def add(self, ports: list[int]) -> None:
        """Count these ports (more later: nodes started by churn), 32 to a
        chain. A port already counted keeps its rule (a second would count
        it twice)."""
        import subprocess
        new = sorted(set(ports) - set(self.ports))
        self.ports = self.ports + new
        if not self.available or not new:
            return
        text, rules = ["*filter"], []
        for k in range(0, len(new), 32):
            group = new[k:k + 32]
            for chain, opt, top in (("S", "--sport", "OUTPUT"), ("R", "--dport", "INPUT")):
                name = f"{chain}{self.groups}"
                text.append(f":{name} - [0:0]")
                rules.append(f"-A {top} -p udp -m udp {opt} {group[0]}:{group[-1]} -j {name}")
                rules += [f"-A {name} -p udp -m udp {opt} {port} -j RETURN" for port in group]
            self.groups += 1
        payload = "\n".join(text + rules + ["COMMIT", ""])
        for tool in IPTABLES:
            subprocess.run([tool + "-restore", "--noflush"], input=payload.encode(), check=True)

    def read(self) -> dict[int, list[int]]:
        """port -> [bytes sent, bytes received], IPv4 and IPv6 together."""
        import re
        import subprocess
        out: dict[int, list[int]] = {p: [0, 0] for p in self.ports}
        if not self.available:
            return out
        pat = re.compile(r"^\[(\d+):(\d+)\] -A [SR]\d+ -p udp -m udp --([sd])port (\d+) -j RETURN")
        for tool in IPTABLES:
            for line in subprocess.run([tool + "-save", "-c"], capture_output=True, text=True, check=True).stdout.splitlines():
                m = pat.match(line)
                if m and int(m.group(4)) in out:
                    out[int(m.group(4))][0 if m.group(3) == "s" else 1] += int(m.group(2))
        return out


def in_private_netns() -> bool:
    return os.environ.get("MG_BENCH_NETNS") == "1"


def reexec_in_netns() -> None:
    """Run this bench again in a network namespace of its own (root only),
    so loopback counters see this process's packets only."""
    import shutil
    import subprocess
    if in_private_netns() or os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return
    env = dict(os.environ, MG_BENCH_NETNS="1")
    cmd = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable] + sys.argv
    sys.exit(subprocess.run(cmd, env=env).returncode)


def diff(after: dict[int, list[int]], before: dict[int, list[int]]) -> dict[int, tuple[int, int]]:
    return {p: (after[p][0] - before.get(p, [0, 0])[0], after[p][1] - before.get(p, [0, 0])[1]) for p in after}


async def households(args: argparse.Namespace) -> None:
    from microgrid.coordinator.market.clearing import clear_interval
    from microgrid.coordinator.market.district import clear_district, zone_offer
    from microgrid.coordinator.market.district_link import (
        all_keys, clearer_zones, district_key, offers_from, publish_offer, publish_results, publish_zone_lots,
        read_lots, read_result, result_key, shard_of)
    from microgrid.coordinator.market.shards import (
        clear_in_shards, leftovers, levels_hash, shard_name, shard_offer, zone_lots)
    from microgrid.coordinator.market.orders import BUY, SELL, make_order
    from microgrid.coordinator.market.rounds import (
        SettledRound, households as round_records, make_round, meters_from, meters_hash, orders_from, orders_round,
        publish_round, publish_settled, round_key)

    zones = [f"feeder-{z}" for z in range((args.households + args.zone_size - 1) // args.zone_size)]
    n_settlers = len(zones) * args.settlers
    # The shard level (market/shards.py) needs two keys at least.
    args.district_shards = args.district_shards or max(2, len(zones) // 16)
    raise_fd_limit(args.nodes + n_settlers + int(args.nodes * args.churn))
    t_start = time.monotonic()
    # Households share OpenDHT nodes (many endpoints per node); each
    # settling coordinator runs its own node, as on the appliance, so its
    # node's bytes are one coordinator's.
    nodes = await start_nodes(args.nodes + n_settlers, spread=args.bootstrap == "spread", seed=args.seed,
                              get_timeout_s=10.0, put_timeout_s=30.0)
    home_nodes, settler_nodes = nodes[:args.nodes], nodes[args.nodes:]
    homes: list[tuple[str, Endpoint]] = []
    settlers: list[Endpoint] = []
    for z, zone in enumerate(zones):
        size = min(args.zone_size, args.households - z * args.zone_size)
        for k in range(size):
            if k < args.settlers:
                ep = Endpoint(PrivateKey.from_random(), settler_nodes[len(settlers)], args.shards)
                settlers.append(ep)
            else:
                ep = Endpoint(PrivateKey.from_random(), home_nodes[len(homes) % args.nodes], args.shards)
            await ep.start()
            homes.append((zone, ep))
    zone_of = {ep.public_key: z for z, ep in homes}
    # Coordinators of a zone that do not settle: the interval's shard and
    # district clearers are taken from them (a settler already reads its
    # zone's round; the clearers' reads come on top of a household's).
    settler_ids = {id(ep) for ep in settlers}
    idle_homes: dict[str, list[Endpoint]] = {z: [] for z in zones}
    for zone_name, ep in homes:
        if id(ep) not in settler_ids:
            idle_homes[zone_name].append(ep)
    by_shard = {k: [z for z in zones if shard_of(z, args.district_shards) == k] for k in range(args.district_shards)}
    expected = {z: {ep.public_key for zz, ep in homes if zz == z} for z in zones}
    per_node = (args.households - n_settlers) / args.nodes
    counters = WireCounters([n.port for n in nodes])
    where = ("in a network namespace of its own: loopback carries this bench's packets only"
             if in_private_netns() else "sharing loopback with the machine: wire figures include other processes")
    print(f"households: {args.households} households in {len(zones)} feeder zones of {args.zone_size} "
          f"(one district, {args.district_shards} district key(s)), {args.shards} shard(s) per zone; {n_settlers} settling coordinators "
          f"({args.settlers} per zone) on a node each, the other households {per_node:g} to a node on "
          f"{args.nodes} nodes; started in {time.monotonic() - t_start:.1f} s; {where}; per-node counters: "
          f"{'iptables per port' if counters.available else 'none (iptables-legacy missing)'}")
    await asyncio.sleep(args.settle_s)
    # Maintenance: what an idle node costs (pings, table refreshes, our peer refresh).
    c0, lo0, t0 = counters.read(), loopback_bytes(), time.monotonic()
    await asyncio.sleep(args.idle_s)
    idle = diff(counters.read(), c0)
    idle_s = time.monotonic() - t0
    idle_node = statistics.mean(a + b for a, b in idle.values()) / idle_s if counters.available else \
        2 * (loopback_bytes() - lo0) / len(nodes) / idle_s
    print(f"idle: {idle_node:.0f} bytes/s per node sent+received: {idle_node * 900 / 1e3:.0f} KB of maintenance "
          f"per 900-s interval, included below in 'with maint.' (the intervals here last seconds)")
    rng = random.Random(args.seed)
    start0 = (int(time.time()) // 900) * 900
    gate = asyncio.Semaphore(args.put_concurrency)
    print(f"\n{'int.':>4}{'puts ok%':>9}{'saw all%':>9}{'book%':>7}{'district':>9}{'values/settler KB':>18}"
          f"{'wait p50':>9}{'p99 s':>7}{'| settler node KB:':>18}{'sent':>6}{'recv':>6}{'max':>6}{'with maint.':>12}"
          f"{'| household node KB p50':>24}{'max':>6}{'per household':>14}{'lo check':>9}{'s':>5}")
    # Live totals on the overlay (what a coordinator without CoAP does,
    # trading/exchange.py; the appliance fetches them from its
    # counterparties' coordinators instead, trading/live.py): while an
    # interval runs every trader republishes its export and import so far
    # each poll, and reads by name the few records that decide what it
    # streams and expects (delivery.live_needed; here 3 members of its
    # zone), each version kept by the storing nodes for --live-store-s.
    lrng = random.Random(args.seed + 11)
    members = {z: [ep for zz, ep in homes if zz == z] for z in zones}
    needed = {id(ep): [o.public_key for o in lrng.sample([m for m in members[z] if m is not ep],
                                                         min(3, len(members[z]) - 1))] for z, ep in homes}
    index = {ep.public_key: n for n, (_, ep) in enumerate(homes)}
    live_stats: dict[str, float] = {}

    async def live_polls(interval: int, start: int) -> None:
        from microgrid.coordinator.trading.exchange import LIVE_PREFIX
        key = {z: f"{LIVE_PREFIX}{z}/{start}" for z in zones}
        newest, reads, values0 = 0, 0, sum(ep.values for _, ep in homes)
        t_live = time.monotonic()
        for poll in range(args.live_polls):
            async def put_live(zone: str, ep: Endpoint, poll: int = poll) -> None:
                async with gate:
                    body = json.dumps({"export_wh": poll * 100_000 + index[ep.public_key], "import_wh": poll}).encode()
                    await ep.put(key[zone], body, 3600, store_s=args.live_store_s)

            async def read_live(zone: str, ep: Endpoint, poll: int = poll) -> int:
                async with gate:
                    got = await ep.get(key[zone], args.read_timeout, publishers=needed[id(ep)])
                return sum(json.loads(r.body)["import_wh"] == poll for r in got)

            await asyncio.gather(*(put_live(z, ep) for z, ep in homes))
            seen = await asyncio.gather(*(read_live(z, ep) for z, ep in homes))
            newest += sum(seen)
            reads += sum(len(needed[id(ep)]) for _, ep in homes)
        took = time.monotonic() - t_live
        live_stats.update(newest=100 * newest / max(1, reads), took=took,
                          versions=(sum(ep.values for _, ep in homes) - values0) / max(1, reads))
        print(f"  interval {interval}: {args.live_polls} live polls by {len(homes)} households in {took:.0f} s "
              f"({took / args.live_polls:.1f} s a poll, versions kept {args.live_store_s} s)", file=sys.stderr)

    for i in range(args.intervals):
        start = start0 + 900 * i
        for _, ep in homes:
            ep.sent = ep.received = ep.late = 0
            ep.lookups.clear()
        if args.churn and i == 1:
            # 25 % of the household nodes die without warning between
            # intervals 0 and 1 (no goodbye: maintain_storage is off) and
            # come back as new nodes with new ids; the households they
            # hosted move there, as coordinators that restarted.
            t_churn = time.monotonic()
            crng = random.Random(args.seed + 7)
            victims = crng.sample(home_nodes, int(len(home_nodes) * args.churn))
            dead = {id(v) for v in victims}
            await asyncio.gather(*(v.stop() for v in victims))
            await join_parked()
            alive = [n for n in nodes if id(n) not in dead]
            fresh: dict[int, Overlay] = {}
            for v in victims:
                node = Overlay(PrivateKey.from_random(), settings([x.port for x in crng.sample(alive, SEEDS)],
                                                                  get_timeout_s=10.0, put_timeout_s=30.0))
                await node.start()
                fresh[id(v)] = node
            moved = 0
            for _, ep in homes:
                if id(ep.host) in fresh:
                    ep.host = fresh[id(ep.host)]
                    moved += 1
            home_nodes = [fresh.get(id(n), n) for n in home_nodes]
            nodes = [fresh.get(id(n), n) for n in nodes]
            counters.add([n.port for n in fresh.values()])
            print(f"churn: {len(victims)} of {len(home_nodes)} household nodes killed without warning and "
                  f"replaced by new nodes ({moved} households moved) in {time.monotonic() - t_churn:.0f} s; "
                  f"interval 1 runs right after, interval 2 and on later")
        PUT_BYTES.clear()
        c0, lo0, t0 = counters.read(), loopback_bytes(), time.monotonic()
        # One round record per household (market/rounds.py): its meter
        # total for [start, start + 900) and its order for the interval
        # whose book reads this round (start + 1800).
        traded = start + 1800
        assert orders_round(traded, 900) == start
        rkeys = {z: round_key(z, start) for z in zones}
        dkeys = all_keys("district", traded, args.district_shards)
        top_key = district_key("district", traded)
        rkey = {z: result_key("district", traded, z, args.district_shards) for z in zones}
        first = {z: next(e for e in settlers if zone_of[e.public_key] == z) for z in zones}
        # The interval's clearers (market/shards.py): per district shard, the
        # first idle coordinator of the shard's clearer zones reads the
        # shard's offers; the district's clearers, the second idle one of the
        # district's clearer zones, read one offer per shard.
        shard_clearers = {k: [idle_homes[z][0] for z in clearer_zones(zs, traded, args.clearers)]
                          for k, zs in by_shard.items()}
        clears_shard = {ep.public_key: k for k, eps in shard_clearers.items() for ep in eps}
        clearers = [idle_homes[z][1] for z in clearer_zones(zones, traded, args.clearers)]
        listens = {id(ep): [rkeys[zone_of[ep.public_key]]] for ep in settlers}
        for k, eps in shard_clearers.items():
            for ep in eps:
                listens[id(ep)] = [dkeys[k]]
        for ep in clearers:
            listens[id(ep)] = [top_key]
        offers_made: dict[str, Any] = {}
        # Settlers subscribe before the interval's records are published (as
        # the market's book collector listens): each record reaches them
        # from the listened storing nodes as it is stored, with no polling.
        heard: dict[tuple[int, str], dict[tuple[bytes, str], Any]] = {}
        handles: dict[tuple[int, str], Any] = {}
        for ep in settlers + [ep for eps in shard_clearers.values() for ep in eps] + clearers:
            for key in listens[id(ep)] if args.collect == "listen" else []:
                got = heard.setdefault((id(ep), key), {})
                handles[(id(ep), key)] = ep.listen(key, lambda r, got=got: got.__setitem__((r.publisher, r.slot), r))
        if handles:
            await asyncio.sleep(1.0)

        async def publish(zone: str, ep: Endpoint) -> bool:
            async with gate:
                so = make_order(ep.signing_key, BUY if rng.random() < 0.5 else SELL, zone, traded,
                                rng.randrange(100, 3000), rng.randrange(50, 200), traded + 900, i, int(time.time()))
                rec = make_round(start, 900, (rng.randrange(0, 3000), rng.randrange(0, 3000)), [so])
                return await publish_round(ep, zone, rec)

        if args.live_polls:
            await live_polls(i, start)
        ok = await asyncio.gather(*(publish(z, ep) for z, ep in homes))
        print(f"  interval {i}: {len(ok)} households published in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        # Gets run a few at a time (each pages many values through this one
        # process); listening settlers only wait, all at once.
        settling = asyncio.Semaphore(args.settle_concurrency if args.collect == "get" else len(settlers))

        async def collect(ep: Endpoint, key: str, done: Any) -> list[Any]:
            if args.collect == "get":
                return await ep.get(key, args.read_timeout)
            got = heard[(id(ep), key)]
            deadline = time.monotonic() + args.listen_wait
            t = time.monotonic()
            while not done(got) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            if not done(got):
                # A listen that missed a record (a storing node that had not
                # synced yet): ask the missing publishers by name, as the
                # overlay's flooded reads do.
                missing = [p for p in expected[zone_of[ep.public_key]] if (p, "") not in got]
                ep.late += len(missing)
                for r in await ep.get(key, args.read_timeout, publishers=missing):
                    got[(r.publisher, r.slot)] = r
            ep.lookups.append(time.monotonic() - t)
            return list(got.values())

        async def settle(ep: Endpoint) -> tuple[list[Any], dict[bytes, tuple[int, int]]]:
            async with settling:
                zone = zone_of[ep.public_key]
                def every(got: Any, zone: str = zone) -> bool:
                    return {p for p, s in got if s == ""} >= expected[zone]
                members = expected[zone].__contains__
                rounds = round_records(await collect(ep, rkeys[zone], every), start, 900, members)
                # The round is read: its listen is cancelled, and the record
                # saying what we settled on is the delivery that ends it in
                # the engine (and the other settlers' cancelled ones).
                handle = handles.get((id(ep), rkeys[zone]))
                if handle is not None:
                    handle.cancel()
                meters = meters_from(rounds)
                await publish_settled(ep, zone, SettledRound(start, 900, len(meters), meters_hash(meters)))
                # Level 1 -> 2: the zone clears its own book and offers what is
                # left to the district (its first settler publishes; the
                # others compute the same bytes and would publish a dissent).
                orders = orders_from(rounds, traded)
                offer = zone_offer(orders, clear_interval(orders, zone, traded), max_steps=args.offer_steps)
                if ep is first[zone]:
                    offers_made[zone] = offer
                    await publish_offer(ep, "district", offer, args.district_shards)
                return orders, meters

        read = await asyncio.gather(*(settle(ep) for ep in settlers))
        print(f"  interval {i}: {len(settlers)} settlers read their zones by {time.monotonic() - t0:.0f} s", file=sys.stderr)
        # Level 2 (market/shards.py): each shard's clearers read its zones'
        # offers, clear them and offer the district what is left; the
        # district's clearers read one offer per shard and clear those.
        results: list[Any] = []
        shard_done: dict[int, Any] = {}

        async def wait_heard(ep: Endpoint, key: str, done: Any) -> dict[tuple[bytes, str], Any]:
            got = heard.setdefault((id(ep), key), {})
            deadline = time.monotonic() + args.listen_wait
            while not done(got) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            if not done(got):  # a listen missed a record: read the key
                ep.late += 1
                for r in await ep.get(key, args.read_timeout):
                    got[(r.publisher, r.slot)] = r
            handle = handles.get((id(ep), key))
            if handle is not None:
                # Read: our own record under this key, published next, is
                # the delivery that ends the listen in the engine.
                handle.cancel()
            return got

        async def clear_shard(ep: Endpoint, k: int) -> None:
            t = time.monotonic()
            publishers = {first[z].public_key for z in by_shard[k]}
            got = await wait_heard(ep, dkeys[k], lambda got: {p for p, _ in got} >= publishers)
            offers = offers_from(got.values(), traded, zone_of.get)
            res = clear_district(offers.values(), shard_name(k), traded, 900)
            shard_done[id(ep)] = (offers, res)
            await publish_offer(ep, "district", shard_offer(k, leftovers(offers.values(), res), res,
                                                            args.offer_steps), 1)
            ep.lookups.append(time.monotonic() - t)

        async def clear_top(ep: Endpoint) -> None:
            t = time.monotonic()
            got = await wait_heard(ep, top_key, lambda got: {p for p, _ in got} >= set(clears_shard))
            offers = offers_from(got.values(), traded, lambda p: shard_name(clears_shard[p]) if p in clears_shard else None)
            result = clear_district(offers.values(), "district", traded, 900)
            results.append(result)
            await publish_results(ep, "district", result, offers, 1)
            ep.lookups.append(time.monotonic() - t)

        await asyncio.gather(*(clear_shard(ep, k) for k, eps in shard_clearers.items() for ep in eps),
                             *(clear_top(ep) for ep in clearers))

        async def shard_down(ep: Endpoint, k: int) -> None:
            # The shard's share of the district (the district clearers'
            # records only, by name), then its zones' lots in slices.
            t = time.monotonic()
            offers, res = shard_done[id(ep)]
            got = await read_result(ep, "district", traded, shard_name(k), [c.public_key for c in clearers], 1,
                                    args.read_timeout)
            lots = zone_lots(offers, res, None if got is None else got[1])
            await publish_zone_lots(ep, "district", traded, 900, levels_hash(res, None if got is None else got[0]),
                                    lots, args.district_shards)
            ep.lookups.append(time.monotonic() - t)

        await asyncio.gather(*(shard_down(ep, k) for k, eps in shard_clearers.items() for ep in eps))
        lots_seen: list[Any] = []

        async def down(ep: Endpoint) -> None:
            zone = zone_of[ep.public_key]
            # Read once the shard's clearers are done, their records only (by
            # name, a majority first): a listen here would be refreshed until
            # the engine's next delivery on the key, and nothing more comes.
            t = time.monotonic()
            k = shard_of(zone, args.district_shards)
            lots = await read_lots(ep, "district", traded, zone, [c.public_key for c in shard_clearers[k]],
                                   args.district_shards, args.read_timeout)
            ep.lookups.append(time.monotonic() - t)
            lots_seen.append((zone, lots))

        await asyncio.gather(*(down(ep) for ep in settlers))
        district_hashes = {r.hash for r in results}
        ref = clear_in_shards(offers_made.values(), args.district_shards, "district", traded, 900,
                              args.offer_steps) if len(district_hashes) == 1 else None
        district_ok = ref is not None and all(
            lots is not None and (lots.sold, lots.bought) == (ref[z].sold, ref[z].bought) for z, lots in lots_seen)
        for h in handles.values():
            h.cancel()
        shard_eps = [ep for eps in shard_clearers.values() for ep in eps]
        wire = diff(counters.read(), c0)
        lo = loopback_bytes() - lo0
        took = time.monotonic() - t0
        books, seen = [b for b, _ in read], [m for _, m in read]
        book_ok = [{so.order.owner for so in got} >= expected[zone_of[ep.public_key]] for ep, got in zip(settlers, books)]
        saw_all = [set(got) >= expected[zone_of[ep.public_key]] for ep, got in zip(settlers, seen)]
        # Every settler of a zone settled on the same meter totals.
        by_zone: dict[str, set[bytes]] = {}
        for ep, totals in zip(settlers, seen):
            by_zone.setdefault(zone_of[ep.public_key], set()).add(meters_hash(totals))
        settled_agree = all(len(h) == 1 for h in by_zone.values())
        lat = [x for ep in settlers for x in ep.lookups]
        stored = sorted(v / 1e3 for v in stored_per_node(nodes).values())
        maint = idle_node * max(0.0, 900 - took)
        s_sent = [wire[n.port][0] / 1e3 for n in settler_nodes]
        s_recv = [wire[n.port][1] / 1e3 for n in settler_nodes]
        s_tot = [a + b for a, b in zip(s_sent, s_recv)]
        h_tot = sorted(sum(wire[n.port]) / 1e3 for n in home_nodes)
        check = sum(a for a, _ in wire.values()) / lo if lo and counters.available else float("nan")
        agree = "agree" if district_ok and settled_agree else "DIFFER"
        print(f"{i:>4}{100 * sum(ok) / len(ok):>9.2f}{100 * sum(saw_all) / len(saw_all):>9.1f}"
              f"{100 * sum(book_ok) / len(book_ok):>7.1f}{agree:>9}"
              f"{statistics.mean(ep.received for ep in settlers) / 1e3:>18.1f}{pct(lat, .5):>9.1f}{pct(lat, .99):>7.1f}"
              f"{'':>18}{statistics.mean(s_sent):>6.0f}{statistics.mean(s_recv):>6.0f}{max(s_tot):>6.0f}"
              f"{max(s_tot) + maint / 1e3:>12.0f}{'':>24}{pct(h_tot, .5):>6.0f}{max(h_tot):>6.0f}"
              f"{pct(h_tot, .5) / max(1.0, per_node) + maint / 1e3:>14.0f}{check:>9.2f}{took:>5.0f}")
        if args.live_polls:
            print(f"      live totals: {args.live_polls} polls, {live_stats['took'] / args.live_polls:.1f} s apart, "
                  f"each version kept {args.live_store_s} s: the newest version seen in {live_stats['newest']:.2f} % "
                  f"of the reads by name, {live_stats['versions']:.2f} versions per publisher read")
        print(f"      stored this interval per node (estimate: the 8 nodes closest to each key) KB p50/p99/max "
              f"{pct(stored, .5):.1f}/{pct(stored, .99):.0f}/{max(stored):.0f}; reads per settler "
              f"{statistics.mean(len(ep.lookups) for ep in settlers):.1f}, per clearer "
              f"{statistics.mean(len(ep.lookups) for ep in shard_eps + clearers):.1f}")
        if args.verbose:
            print(f"      settler nodes KB p50/p99/max {pct(s_tot, .5):.0f}/{pct(s_tot, .99):.0f}/{max(s_tot):.0f}; "
                  f"household nodes KB p50/p99/max {pct(h_tot, .5):.0f}/{pct(h_tot, .99):.0f}/{max(h_tot):.0f}; "
                  f"loopback {lo / 1e6:.1f} MB; values put per household {statistics.mean(ep.sent for _, ep in homes):.0f} B; "
                  f"district results {len(district_hashes)}; records a listen missed, read by name: "
                  f"{sum(ep.late for ep in settlers + shard_eps + clearers)}")
            # The busiest nodes, and why: seeds (everyone's first contact),
            # settlers, clearers, and for how many of the interval's keys
            # the node is among the 8 closest (it stores them and serves
            # every search, put and listen on them).
            keys_now = list(rkeys.values()) + sorted(set(dkeys) | set(rkey.values())) + [top_key]
            ids = {n.port: int(n.node_id, 16) for n in nodes}
            near: dict[int, int] = {}
            for key in keys_now:
                h = int(str(dht.InfoHash.get(key)), 16)
                for port in sorted(ids, key=lambda p: ids[p] ^ h)[:8]:
                    near[port] = near.get(port, 0) + 1
            roles = {n.port: "seed" for n in nodes[:SEEDS]}
            roles.update({ep.host.port: "settler" for ep in settlers})
            roles.update({ep.host.port: "shard clearer" for ep in shard_eps})
            roles.update({ep.host.port: "clearer" for ep in clearers})
            top = sorted(nodes, key=lambda n: -sum(wire[n.port]))[:6]
            shard_kb = [sum(wire[ep.host.port]) / 1e3 for ep in shard_eps]
            print("      district clearers' nodes KB (keys stored): " + ", ".join(
                f"{sum(wire[ep.host.port]) / 1e3:.0f} ({near.get(ep.host.port, 0)})" for ep in clearers)
                + f"; {len(shard_eps)} shard clearers' nodes KB p50/max {pct(shard_kb, .5):.0f}/{max(shard_kb):.0f}"
                + "; seeds KB: " + ", ".join(f"{sum(wire[n.port]) / 1e3:.0f}" for n in nodes[:SEEDS]))
            print("      busiest nodes KB (role, keys stored): " + ", ".join(
                f"{sum(wire[n.port]) / 1e3:.0f} ({roles.get(n.port, 'household')}, {near.get(n.port, 0)})" for n in top)
                + f"; nodes storing any of the {len(keys_now)} keys: median "
                f"{pct([sum(wire[p]) / 1e3 for p in near], .5):.0f} KB, the others "
                f"{pct([sum(wire[n.port]) / 1e3 for n in nodes if n.port not in near], .5):.0f} KB")
    if len(nodes) > 500:
        # Stopping thousands of nodes one shutdown at a time takes longer
        # than the run: the figures are out, the process ends here.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    await asyncio.gather(*(n.stop() for n in nodes))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", nargs="?", default="all", choices=("all", "lookups", "floods", "households"))
    ap.add_argument("--quick", action="store_true", help="small figures (the default of 'all')")
    ap.add_argument("--full", action="store_true", help="'all' at the full figures")
    ap.add_argument("--nodes", type=int, default=None)
    ap.add_argument("--lookups", type=int, default=1500, help="lookups per phase")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--kill", type=float, default=0.25, help="fraction of nodes killed (and replaced)")
    ap.add_argument("--phase-s", type=float, default=60.0, help="time limit per phase")
    ap.add_argument("--junk", type=int, default=10_000)
    ap.add_argument("--attackers", type=int, default=10)
    ap.add_argument("--signed", type=int, default=60)
    ap.add_argument("--flood-nodes", type=int, default=8)
    ap.add_argument("--households", type=int, default=10_000)
    ap.add_argument("--zone-size", type=int, default=100, help="households per feeder zone")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--settlers", type=int, default=2, help="households per zone that settle each interval")
    ap.add_argument("--intervals", type=int, default=2)
    ap.add_argument("--settle-concurrency", type=int, default=16, help="settlers reading at once (this process)")
    ap.add_argument("--idle-s", type=float, default=20.0, help="households: seconds of idle traffic measured")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--clearers", type=int, default=3, help="households: coordinators clearing the district each interval")
    ap.add_argument("--put-concurrency", type=int, default=100,
                    help="households: publications in flight at once in this process (too many on a loaded "
                         "machine: requests time out and OpenDHT sends them again)")
    ap.add_argument("--listen-wait", type=float, default=20.0,
                    help="households: seconds a listening settler waits after publication before asking by name")
    ap.add_argument("--offer-steps", type=int, default=16, help="households: price steps per side of a zone's offer")
    ap.add_argument("--district-shards", type=int, default=0,
                    help="households: keys the district's offers spread over (0: one per 16 zones)")
    ap.add_argument("--collect", choices=("listen", "get"), default="listen",
                    help="households: settlers listen to their zone's keys from the interval's start, or get them after")
    ap.add_argument("--read-timeout", type=float, default=60.0, help="seconds a settler's read may take")
    ap.add_argument("--settle-s", type=float, default=5.0, help="pause after start and between publications")
    ap.add_argument("--churn", type=float, default=0.0,
                    help="households: fraction of household nodes killed without warning and replaced before "
                         "interval 1 (0.25: the issue's churn)")
    ap.add_argument("--live-polls", type=int, default=0,
                    help="households: live-total polls per interval over the overlay (each household publishes its own "
                         "and reads 3 zone members' by name; 15 = a 900-s interval at the default 60-s poll)")
    ap.add_argument("--live-store-s", type=int, default=60,
                    help="households: how long storing nodes keep each live version (about two polls)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bootstrap", choices=("spread", "seeds"), default="spread",
                    help="households: each node bootstraps from 3 nodes started before it, or all from the first 3")
    a = ap.parse_args()
    if a.mode == "households":
        reexec_in_netns()
    if a.mode == "all" and not a.full:
        a.quick = True
    if a.quick:
        a.lookups, a.phase_s, a.junk, a.households = 300, 20.0, 2000, 1000
    modes = ("lookups", "floods", "households") if a.mode == "all" else (a.mode,)
    for mode in modes:
        if mode == "lookups":
            a.nodes = a.nodes or (200 if a.quick else 1000)
            asyncio.run(lookups(a))
        elif mode == "floods":
            asyncio.run(floods(a))
        else:
            # One OpenDHT node per household, as on the appliance, as far as
            # the hard file-descriptor limit allows (4 per node); settlers
            # always get their own.
            settlers = (a.households + a.zone_size - 1) // a.zone_size * a.settlers
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            # (with churn, room for the replacements too)
            room = int(((hard - 256) // FDS_PER_NODE - settlers) / (1 + a.churn)) \
                if hard != resource.RLIM_INFINITY else a.households
            a.nodes = a.nodes if a.mode == "households" and a.nodes else max(1, min(a.households - settlers, room))
            asyncio.run(households(a))
        print()
