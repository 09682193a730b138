"""Trades the wires can carry: a sunny day with a high share of PV on a
pandapower benchmark feeder, cleared without and with network limits,
each interval judged by an AC power flow; and the network-aware clearing's
speed for 1,000 orders on a 100-bus feeder, against the plain clearing
of the same orders in the same run (the baseline), and its result in
another process with another hash seed.

    python bench/bench_grid.py [--network kerber_dorfnetz] [--pv-share 0.8] [--kwp 10-15] [--mv-pu 1.04] [--seed 7]
                               [--households 0 (all load buses)] [--skip-day] [--skip-speed]

The day (96 intervals of 15 min): household i sits on the network's i-th
load bus; a share of them has PV (clear sky, peak at 13:00, kWp drawn
from --kwp); the transformer's medium-voltage side is held at --mv-pu
(on a sunny day PV on the medium-voltage grid raises it too: German
practice leaves the low-voltage grid about 3 % of rise); loads have a morning and an evening peak. Every interval
each household offers its surplus (ask 20..40 sat/kWh) or bids for its
deficit (150..250 sat/kWh), and the utility, upstream of the transformer,
bids 40 sat/kWh for any export (the export tariff). What the meters then
show: a seller exports what it sold (in the network-aware zone an export
needs a cleared trade: the rest is curtailed by its inverter), a buyer
imports its whole deficit (what it did not buy from neighbours comes from
the utility at 250 sat/kWh). Without network limits every surplus sells,
as every surplus is exported today.

Bar (issue 21): the unconstrained market shows violations in the power
flow (EN 50160 +-10 %, loading above 100 %), the network-aware one none,
trading at least 80 % of the energy; clearing 1,000 orders on the
100-bus feeder with network limits in <= 1 s, the same hash in another
process.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bitcoinx import PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - run from a checkout

from microgrid.coordinator.market.clearing import ClearedInterval, ZoneRules, clear_interval  # noqa: E402
from microgrid.coordinator.market.orders import BUY, SELL, SignedOrder, make_order  # noqa: E402

ZONE = "bench"
DAY = 1_800_000_000 - 1_800_000_000 % 86_400
INTERVAL_S = 900
EXPORT_TARIFF = 40
IMPORT_TARIFF = 250


def pv_kw(kwp: float, hour: float) -> float:
    """Clear-sky output, sunrise 6:00, sunset 20:00, peak 13:00."""
    if not 6.0 < hour < 20.0:
        return 0.0
    return 0.85 * kwp * math.sin(math.pi * (hour - 6.0) / 14.0) ** 1.3


def load_kw(scale: float, hour: float) -> float:
    base = 0.30 + 0.9 * math.exp(-((hour - 7.5) / 1.0) ** 2) + 1.6 * math.exp(-((hour - 19.5) / 1.5) ** 2)
    return scale * base


def sunny_day(args: argparse.Namespace) -> bool:
    from microgrid.coordinator.grid.check import GridCheck, GridReport
    from microgrid.coordinator.grid.model import benchmark, load_network
    from microgrid.coordinator.grid.sensitivity import compute_limits

    rnd = random.Random(args.seed)
    net = load_network(args.network)
    n_load_buses = len(dict.fromkeys(int(b) for b in net.load["bus"]))
    n = args.households or n_load_buses
    keys = [PrivateKey.from_int(50_000 + i) for i in range(n)]
    pub = [k.public_key.to_bytes() for k in keys]
    utility_key = PrivateKey.from_int(49_999)
    utility = utility_key.public_key.to_bytes()
    t = time.perf_counter()
    model = benchmark(args.network, pub, [utility])
    model.net.ext_grid["vm_pu"] = args.mv_pu
    t_model = time.perf_counter() - t
    t = time.perf_counter()
    limits = compute_limits(model)
    t_limits = time.perf_counter() - t
    lo, hi = (float(x) for x in args.kwp.split("-"))
    kwp = [round(rnd.uniform(lo, hi), 1) if rnd.random() < args.pv_share else 0.0 for _ in range(n)]
    scale = [rnd.uniform(0.6, 1.4) for _ in range(n)]
    ask = [rnd.randint(20, EXPORT_TARIFF) for _ in range(n)]
    bid = [rnd.randint(150, 250) for _ in range(n)]
    print(f"network {args.network}: {len(net.bus)} buses, {len(net.line)} lines, transformer"
          f" {float(net.trafo.sn_mva.iloc[0]) * 1000:.0f} kVA; {n} households, {sum(1 for k in kwp if k)} with PV"
          f" ({sum(kwp):.0f} kWp)")
    print(f"model {t_model:.2f} s (pandapower import included); limits {t_limits:.2f} s"
          f" ({len(limits.names)} rows x {len(limits.nodes)} nodes, {len(limits.nodes)} power flows + 1)")

    modes = {"unconstrained": ZoneRules(), "network-aware": ZoneRules(network=limits)}
    check = GridCheck(model)
    reports = {m: GridReport() for m in modes}
    traded = {m: 0 for m in modes}
    p2p = {m: 0 for m in modes}
    sold = {m: [0] * n for m in modes}
    bought = {m: [0] * n for m in modes}
    money = {m: [0] * n for m in modes}  # sat: sales - purchases - utility imports
    surplus_total = [0] * n
    clear_s = {m: 0.0 for m in modes}
    check_s = 0.0
    idx = {p: i for i, p in enumerate(pub)}
    for step in range(86_400 // INTERVAL_S):
        start = DAY + step * INTERVAL_S
        hour = (step + 0.5) * INTERVAL_S / 3600
        net_wh = [round((pv_kw(kwp[i], hour) - load_kw(scale[i], hour)) * 1000 * INTERVAL_S / 3600) for i in range(n)]
        book: list[SignedOrder] = []
        for i, w in enumerate(net_wh):
            if w > 0:
                surplus_total[i] += w
                book.append(make_order(keys[i], SELL, ZONE, start, w, ask[i], start + INTERVAL_S, step, start - 3600))
            elif w < 0:
                book.append(make_order(keys[i], BUY, ZONE, start, -w, bid[i], start + INTERVAL_S, step, start - 3600))
        book.append(make_order(utility_key, BUY, ZONE, start, 10_000_000, EXPORT_TARIFF, start + INTERVAL_S, step,
                               start - 3600))
        for m, rules in modes.items():
            t = time.perf_counter()
            c: ClearedInterval = clear_interval(book, ZONE, start, INTERVAL_S, rules)
            clear_s[m] += time.perf_counter() - t
            traded[m] += c.volume_wh
            s_i = [0] * n
            b_i = [0] * n
            for tr in c.trades:
                s_i[idx[tr.seller]] += tr.wh
                if tr.buyer != utility:
                    b_i[idx[tr.buyer]] += tr.wh
                    p2p[m] += tr.wh
            for pa in c.pairs:
                if pa.seller in idx:
                    money[m][idx[pa.seller]] += pa.sats
                if pa.buyer in idx:
                    money[m][idx[pa.buyer]] -= pa.sats
            metered = {}
            for i in range(n):
                sold[m][i] += s_i[i]
                bought[m][i] += b_i[i]
                deficit = -net_wh[i] if net_wh[i] < 0 else 0
                money[m][i] -= (deficit - b_i[i]) * IMPORT_TARIFF // 1000
                metered[pub[i]] = s_i[i] - deficit
            t = time.perf_counter()
            reports[m].add(check.run(start, INTERVAL_S, metered))
            check_s += time.perf_counter() - t

    print(f"\n{'':34s} {'unconstrained':>15s} {'network-aware':>15s}")
    su, sn = reports["unconstrained"].summary(), reports["network-aware"].summary()
    rows = [
        ("intervals with voltage violations", "intervals_with_voltage_violations", "d"),
        ("bus-intervals outside 0.90-1.10 pu", "bus_voltage_violations", "d"),
        ("intervals with overloads", "intervals_with_overloads", "d"),
        ("power flows not converged", "not_converged", "d"),
        ("max voltage, pu", "max_vm_pu", ".4f"),
        ("min voltage, pu", "min_vm_pu", ".4f"),
        ("max line loading, %", "max_line_loading_percent", ".1f"),
        ("max transformer loading, %", "max_trafo_loading_percent", ".1f"),
    ]
    for label, key, fmt in rows:
        print(f"{label:34s} {su[key]:>15{fmt}} {sn[key]:>15{fmt}}")
    tu, tn = traded["unconstrained"], traded["network-aware"]
    print(f"{'energy traded, kWh':34s} {tu / 1000:>15.1f} {tn / 1000:>15.1f}   ratio {tn / tu:.3f}")
    print(f"{'  of it between neighbours, kWh':34s} {p2p['unconstrained'] / 1000:>15.1f}"
          f" {p2p['network-aware'] / 1000:>15.1f}")
    print(f"{'PV surplus offered, kWh':34s} {sum(surplus_total) / 1000:>15.1f}")
    print(f"{'clearing, s per interval':34s} {clear_s['unconstrained'] / 96:>15.4f}"
          f" {clear_s['network-aware'] / 96:>15.4f}   ratio {clear_s['network-aware'] / clear_s['unconstrained']:.2f}")
    print(f"{'power-flow check, s per interval':34s} {check_s / 192:>15.4f}")

    print(f"\nEach household (kWh; sat = sales - P2P purchases - utility imports at {IMPORT_TARIFF} sat/kWh)")
    print(f"{'household':>16s} {'kWp':>5s} {'surplus':>8s} {'sold U':>7s} {'sold N':>7s} {'curtail':>8s}"
          f" {'bought U':>9s} {'bought N':>9s} {'sat U':>8s} {'sat N':>8s}")
    for i in range(n):
        point = model.members[pub[i]]
        print(f"{point:>16s} {kwp[i]:>5.1f} {surplus_total[i] / 1000:>8.1f} {sold['unconstrained'][i] / 1000:>7.1f}"
              f" {sold['network-aware'][i] / 1000:>7.1f} {(surplus_total[i] - sold['network-aware'][i]) / 1000:>8.1f}"
              f" {bought['unconstrained'][i] / 1000:>9.1f} {bought['network-aware'][i] / 1000:>9.1f}"
              f" {money['unconstrained'][i]:>8,} {money['network-aware'][i]:>8,}")
    violations_u = su["intervals_with_voltage_violations"] + su["intervals_with_overloads"] + su["not_converged"]
    violations_n = sn["intervals_with_voltage_violations"] + sn["intervals_with_overloads"] + sn["not_converged"]
    ok = violations_u > 0 and violations_n == 0 and tn >= 0.8 * tu
    print(f"\nbar: unconstrained violations {violations_u} > 0, network-aware {violations_n} == 0,"
          f" traded {tn / tu:.1%} >= 80 %: {'met' if ok else 'NOT met'}")
    return ok


SUBPROCESS = """
import sys
sys.path.insert(0, sys.argv[1])
from microgrid.coordinator.grid.model import benchmark
from microgrid.coordinator.grid.sensitivity import compute_limits
from microgrid.coordinator.market.clearing import ZoneRules, clear_interval
from microgrid.coordinator.market.orders import decode_order
data = open(sys.argv[2], "rb").read()
import cbor2
network, households, utility, encoded, start = cbor2.loads(data)
limits = compute_limits(benchmark(network, households, [utility]))
book = [decode_order(e) for e in encoded]
print(limits.digest.hex(), clear_interval(book, "bench", start, 900, ZoneRules(network=limits)).hash_hex)
"""


def speed(args: argparse.Namespace) -> bool:
    import cbor2

    from microgrid.coordinator.grid.model import benchmark
    from microgrid.coordinator.grid.sensitivity import compute_limits

    rnd = random.Random(args.seed + 1)
    model0 = benchmark(args.network, [])
    buses = len(model0.net.bus)
    n_load = len(dict.fromkeys(model0.points[p] for p in model0.points))  # every bus is a connection point
    owners = min(args.households or 57, n_load)
    keys = [PrivateKey.from_int(70_000 + i) for i in range(owners)]
    pub = [k.public_key.to_bytes() for k in keys]
    utility_key = PrivateKey.from_int(69_999)
    model = benchmark(args.network, pub, [utility_key.public_key.to_bytes()])
    limits = compute_limits(model)
    start = DAY + 13 * 3600
    book = []
    for i in range(args.orders - 1):
        k = i % owners
        # Noon: two sellers to every buyer, a few kWh each, so the network binds.
        if i % 3:
            book.append(make_order(keys[k], SELL, ZONE, start, rnd.randint(200, 2500), rnd.randint(10, 60),
                                   start + 900, i, start - 3600))
        else:
            book.append(make_order(keys[k], BUY, ZONE, start, rnd.randint(100, 1500), rnd.randint(30, 250),
                                   start + 900, i, start - 3600))
    book.append(make_order(utility_key, BUY, ZONE, start, 10_000_000, EXPORT_TARIFF, start + 900, 0, start - 3600))
    rules_plain, rules_net = ZoneRules(), ZoneRules(network=limits)

    def best(rules: ZoneRules, runs: int = 5) -> tuple[float, ClearedInterval]:
        times = []
        c = None
        for _ in range(runs):
            t = time.perf_counter()
            c = clear_interval(book, ZONE, start, 900, rules)
            times.append(time.perf_counter() - t)
        assert c is not None
        return min(times), c

    t_plain, plain = best(rules_plain)
    t_net, held = best(rules_net)
    print(f"\n{len(book)} orders on {args.network} ({buses} buses, {len(limits.names)} limit rows,"
          f" {owners} owners + the utility)")
    print(f"  plain clearing (baseline)   {t_plain * 1000:8.1f} ms  volume {plain.volume_wh / 1000:8.1f} kWh"
          f"  trades {len(plain.trades)}")
    print(f"  network-aware clearing      {t_net * 1000:8.1f} ms  volume {held.volume_wh / 1000:8.1f} kWh"
          f"  trades {len(held.trades)}  binding {held.binding}  ratio to baseline {t_net / t_plain:.1f}")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "book.cbor"
        path.write_bytes(cbor2.dumps([args.network, pub, utility_key.public_key.to_bytes(),
                                      [so.encoded for so in reversed(book)], start]))
        env = dict(os.environ, PYTHONHASHSEED="4242")
        out = subprocess.run([sys.executable, "-c", SUBPROCESS, str(Path(__file__).resolve().parent.parent),
                              str(path)], capture_output=True, text=True, env=env, timeout=300)
    theirs = out.stdout.split()
    same = theirs == [limits.digest.hex(), held.hash_hex]
    print(f"  another process (limits recomputed, book reversed, PYTHONHASHSEED=4242): limits"
          f" {theirs[0][:16] if theirs else out.stderr[-300:]}, cleared hash {theirs[1][:16] if len(theirs) > 1 else '-'}"
          f" -> {'identical' if same else 'DIFFERENT'} (ours {limits.digest.hex()[:16]}, {held.hash_hex[:16]})")
    ok = t_net <= 1.0 and same
    print(f"bar: {t_net:.3f} s <= 1 s and identical across coordinators: {'met' if ok else 'NOT met'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--network", default="kerber_dorfnetz")
    ap.add_argument("--households", type=int, default=0, help="0: one on every load bus")
    ap.add_argument("--pv-share", type=float, default=0.8)
    ap.add_argument("--kwp", default="10-15", help="PV size range, kWp")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--mv-pu", type=float, default=1.04,
                    help="the medium-voltage side's voltage at a sunny noon, pu (PV upstream raises it too)")
    ap.add_argument("--orders", type=int, default=1000)
    ap.add_argument("--skip-day", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    ok = True
    if not args.skip_day:
        ok = sunny_day(args) and ok
    if not args.skip_speed:
        ok = speed(args) and ok
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
