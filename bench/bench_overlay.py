"""Overlay lookups with and without churn, on real OpenDHT nodes on loopback.

    python bench/bench_overlay.py [--nodes 50] [--lookups 1500] [--kill 0.25]

N coordinators start in this process, bootstrapping from 3 seeds; each
publishes its signed directory record (dir/<key id>). Then three phases of
the same kind of lookup (a random survivor fetches a random coordinator's
record and verifies it), `--concurrency` at a time:

  baseline   no churn;
  churn      while a quarter of the nodes (never the seeds) are killed one by
             one without warning and as many fresh nodes join from the seeds;
  after      the same lookups once the churn is over.

A lookup succeeds when it returns the target's record with a valid
signature. A killed node's record is still looked up: it must survive on
the replicas. Figures are printed with their ratio to the baseline measured
in the same run. Killed nodes do not hand over what they store (to the
others that is a crash: OpenDHT sends nothing on leaving). Bounded: each
phase stops after `--phase-s` seconds even if lookups remain.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

from bitcoinx import PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from microgrid.coordinator.overlay import OverlaySettings  # noqa: E402
from microgrid.coordinator.overlay.engine import Overlay  # noqa: E402

SEEDS = 3


def settings(seed_ports: list[int]) -> OverlaySettings:
    return OverlaySettings.loopback(bootstrap=[f"127.0.0.1:{p}" for p in seed_ports],
                                    maintain_storage=False, get_timeout_s=5.0)


async def start_node(seed_ports: list[int]) -> Overlay:
    node = Overlay(PrivateKey.from_random(), settings(seed_ports))
    await node.start()
    return node


class Phase:
    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.ok = 0
        self.done = 0
        self.wall = 0.0

    def figures(self) -> dict[str, float]:
        lat = sorted(self.latencies) or [float("nan")]

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

        return {
            "lookups/s": self.done / self.wall if self.wall else 0.0,
            "p50 ms": pct(0.50),
            "p95 ms": pct(0.95),
            "p99 ms": pct(0.99),
            "success %": 100.0 * self.ok / self.done if self.done else 0.0,
        }


async def run_lookups(phase: Phase, alive: list[Overlay], targets: list[tuple[str, bytes]],
                      count: int, concurrency: int, limit_s: float, rng: random.Random) -> None:
    t0 = time.monotonic()
    remaining = [count]

    async def worker() -> None:
        while remaining[0] > 0 and time.monotonic() - t0 < limit_s:
            remaining[0] -= 1
            readers = [n for n in alive if n.running]
            reader = rng.choice(readers)
            pid, pub = rng.choice(targets)
            s = time.monotonic()
            try:
                got = await reader.get(f"dir/{pid}")
            except Exception:
                got = []
            phase.latencies.append(time.monotonic() - s)
            phase.done += 1
            phase.ok += any(r.publisher == pub and r.body == pub for r in got)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.wall = time.monotonic() - t0


async def churn(alive: list[Overlay], victims: list[Overlay], seed_ports: list[int],
                interval_s: float) -> None:
    for v in victims:
        await asyncio.sleep(interval_s)
        alive.remove(v)
        await v.stop()
        alive.append(await start_node(seed_ports))


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    t_start = time.monotonic()
    nodes: list[Overlay] = []
    for i in range(args.nodes):
        ports = [n.port for n in nodes[:SEEDS]]
        nodes.append(await start_node(ports))
    seed_ports = [n.port for n in nodes[:SEEDS]]
    t_boot = time.monotonic() - t_start
    published = await asyncio.gather(*(n.put(f"dir/{n.publisher_id}", n.public_key, 3600) for n in nodes))
    targets = [(n.publisher_id, n.public_key) for n in nodes]
    print(f"nodes run: {args.nodes} ({SEEDS} seeds), started in {t_boot:.1f} s; "
          f"{sum(published)}/{len(nodes)} directory records confirmed stored")

    alive = list(nodes)
    baseline = Phase("baseline (no churn)")
    await run_lookups(baseline, alive, targets, args.lookups, args.concurrency, args.phase_s, rng)

    victims = rng.sample(nodes[SEEDS:], int(args.kill * args.nodes))
    during = Phase(f"during churn ({len(victims)} killed, {len(victims)} joined)")
    interval = min(0.2, args.phase_s / (2 * max(1, len(victims))))
    churner = asyncio.create_task(churn(alive, victims, seed_ports, interval))
    await run_lookups(during, alive, targets, args.lookups, args.concurrency, args.phase_s, rng)
    await churner

    after = Phase("after churn")
    await run_lookups(after, alive, targets, args.lookups, args.concurrency, args.phase_s, rng)

    base = baseline.figures()
    print(f"\n{'phase':<38}" + "".join(f"{k:>14}" for k in base))
    for phase in (baseline, during, after):
        f = phase.figures()
        print(f"{phase.name:<38}" + "".join(f"{v:>14.1f}" for v in f.values()))
        if phase is not baseline:
            ratios = [(v / base[k]) if base[k] else float("nan") for k, v in f.items()]
            print(f"{'  ratio to baseline':<38}" + "".join(f"{r:>13.2f}x" for r in ratios))
    print(f"\nlookups per phase: {baseline.done}, {during.done}, {after.done}; "
          f"median latency baseline {statistics.median(baseline.latencies) * 1000:.2f} ms")
    await asyncio.gather(*(n.stop() for n in alive))
    print(f"total {time.monotonic() - t_start:.1f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--lookups", type=int, default=1500, help="lookups per phase")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--kill", type=float, default=0.25, help="fraction of nodes killed (and replaced)")
    ap.add_argument("--phase-s", type=float, default=15.0, help="time limit per phase")
    ap.add_argument("--seed", type=int, default=1)
    asyncio.run(main(ap.parse_args()))
