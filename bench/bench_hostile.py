"""A hostile neighbour against one coordinator (issue 16's bar): honest
meters' latency, the coordinator's memory and its log, during an attack
against the same figures measured without it in the same run.

    python bench/bench_hostile.py [--datagrams 100000] [--idle 1100] [--uploads 128] [--rate 5000]

The coordinator runs as its own process (`microgrid coordinator run`) on
127.0.0.1 with UDP and TCP open (cap 256 connections) and every source
rate-limited. Four honest meters post signed readings through aiocoap, one
at a time every 0.2 s: first alone (the baseline), then while another
process (microgrid/hostile.py) sends the fuzzed datagrams from 64 loopback
addresses (127.0.0.2 upwards) at --rate a second, opens and holds the idle
TCP connections, and starts 400 KiB block-wise uploads that stall. The
attacker runs at nice 10: on a LAN it would have its own CPU, here it
shares the coordinator's (the coordinator's own CPU share is printed).

Bar: every honest reading 2.01 within 1 s, RSS under 100 MB, log growth
under 1 MB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from microgrid.hostile import measure, percentile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datagrams", type=int, default=100_000)
    ap.add_argument("--idle", type=int, default=1_100)
    ap.add_argument("--uploads", type=int, default=128)
    ap.add_argument("--rate", type=float, default=5_000.0, help="fuzzed datagrams per second")
    ap.add_argument("--sources", type=int, default=64, help="attacker addresses (127.0.0.2 upwards)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        r = measure(work, datagrams=args.datagrams, uploads=args.uploads, idle=args.idle, rate=args.rate,
                    sources=args.sources, max_tcp=256)
    base = [t * 1000 for t, _ in r["baseline"]]
    hit = [t * 1000 for t, _ in r["attacked"]]
    held = [t * 1000 for t, _ in r["held"]]
    b50, b99 = percentile(base, 0.5), percentile(base, 0.99)
    a50, a99 = percentile(hit, 0.5), percentile(hit, 0.99)
    ok = all(code == 65 for phase in ("baseline", "attacked", "held") for _, code in r[phase])
    within = sum(t < 1000 for t in hit)
    attack = r["attack"]
    guard, access = r["health"].get("guard", {}), r["health"].get("access", {})
    print(f"attack: {attack.get('fuzzed', 0):,} fuzzed datagrams in {r['attack_s']:.1f} s from {args.sources} "
          f"addresses; {attack.get('idle_opened', 0):,} idle TCP connections opened, "
          f"{guard.get('tcp_refused', 0):,} closed over the cap; {args.uploads} block-wise uploads of 400 KiB: "
          f"{attack.get('uploads', {}).get('too_large', 0)} answers 4.13")
    print(f"coordinator: {guard.get('rate_limited', 0):,} datagrams over the per-source rate dropped, "
          f"{guard.get('undecodable', 0):,} undecodable dropped, {access.get('refused', 0):,} API requests "
          f"without credentials refused, readings rejected {r['health'].get('ingest', {}).get('rejected', 0):,}")
    print(f"honest readings: {r['honest_sent']} sent, {r['stored']} stored, all 2.01: {ok}; "
          f"during the attack {within}/{len(hit)} within 1 s")
    print(f"honest latency p50: {b50:.1f} ms alone, {a50:.1f} ms attacked (x{a50 / b50:.2f}); "
          f"p99: {b99:.1f} ms alone, {a99:.1f} ms attacked (x{a99 / b99:.2f}); "
          f"max {max(hit):.0f} ms; while connections and uploads are held p50 {percentile(held, 0.5):.1f} ms")
    print(f"coordinator CPU: {r['baseline_cpu_share'] * 100:.0f}% of a core alone, "
          f"{r['attack_cpu_share'] * 100:.0f}% attacked (x{r['attack_cpu_share'] / max(r['baseline_cpu_share'], 1e-3):.1f}); "
          f"machine load average {r['load_average']} on {os.cpu_count()} cores")
    print(f"RSS: {r['rss_before_kb'] / 1024:.1f} MB before, {r['rss_max_kb'] / 1024:.1f} MB at most "
          f"(x{r['rss_max_kb'] / r['rss_before_kb']:.2f}), {r['rss_after_kb'] / 1024:.1f} MB after (bar 100 MB)")
    print(f"log: grew {r['log_growth_bytes']:,} bytes (bar 1 MB), {r['tracebacks']} tracebacks")
    good = (ok and r["alive"] and r["stored"] == r["honest_sent"] and r["rss_max_kb"] < 100 * 1024
            and r["log_growth_bytes"] < 1 << 20 and r["tracebacks"] == 0)
    print("bar met" if good and within == len(hit) else "bar NOT met")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
