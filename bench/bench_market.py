"""Orders cleared per second, for books of 1,000, 10,000 and 100,000 orders
in one zone and interval, against sorting the same orders by price in the
same run (the least any price-priority auction must do).

    python bench/bench_market.py [--sizes 1000,10000,100000] [--budget 40]

Orders are real signed orders (bitcoinx, deterministic signatures) from 64
owners, half buys and half sells, prices spread so about half the volume
trades and the marginal orders fill partially. The clearing figure is the
whole of `clear_interval`: dedupe, priority sort with the tie-breaks,
matching, trade values, canonical CBOR of the cleared book and its hash.
Verification (decode and check the signature) is measured too, on up to
10,000 orders: it is what a coordinator does to each order it collects.

Each figure is the best of repeated runs within a time budget split over
the sizes, so the whole benchmark stays bounded (< 60 s with the default).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Callable

from bitcoinx import PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - run from a checkout

from microgrid.coordinator.market.clearing import ZoneRules, clear_interval  # noqa: E402
from microgrid.coordinator.market.orders import BUY, SELL, SignedOrder, decode_order, make_order  # noqa: E402

ZONE = "bench"
START = 1_800_000_000 - 1_800_000_000 % 900


def make_book(n: int, rnd: random.Random, keys: list[PrivateKey]) -> list[SignedOrder]:
    book = []
    for i in range(n):
        side = BUY if i % 2 else SELL
        price = rnd.randint(80, 200) if side == BUY else rnd.randint(20, 140)
        book.append(make_order(keys[i % len(keys)], side, ZONE, START, rnd.randint(50, 3000), price,
                               START + 900, i, START - 86_400 + rnd.randint(0, 3600)))
    return book


def best_time(fn: Callable[[], object], budget_s: float, min_runs: int = 1, max_runs: int = 50) -> float:
    best = float("inf")
    deadline = time.perf_counter() + budget_s
    runs = 0
    while runs < min_runs or (runs < max_runs and time.perf_counter() < deadline):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        runs += 1
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--budget", type=float, default=40.0, help="seconds for the whole benchmark (approximate)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rnd = random.Random(42)
    keys = [PrivateKey.from_int(10_000 + i) for i in range(64)]
    t0 = time.perf_counter()
    books = {n: make_book(n, rnd, keys) for n in sizes}
    setup = time.perf_counter() - t0
    print(f"setup: signed {sum(sizes):,} orders in {setup:.1f} s ({sum(sizes) / setup:,.0f} orders/s signing)")
    left = max(5.0, args.budget - setup)
    per_size = left / (len(sizes) + 1)
    rules = ZoneRules(capacity_wh=None, grid_fee_sat_per_kwh=5)
    print(f"{'orders':>8} {'clear s':>8} {'cleared/s':>12} {'sorted/s (baseline)':>20} {'ratio':>7}"
          f" {'+ trades s':>10} {'trades':>7} {'volume Wh':>12} {'price':>6} {'book hash':>18}")
    for n in sizes:
        book = books[n]
        shuffled = book[:]
        rnd.shuffle(shuffled)

        def baseline() -> None:
            sorted(shuffled, key=lambda so: so.order.limit_sat_per_kwh)

        def clearing() -> None:
            clear_interval(shuffled, ZONE, START, 900, rules)

        def clearing_and_trades() -> None:
            tuple(clear_interval(shuffled, ZONE, START, 900, rules).trades)

        base_t = best_time(baseline, per_size * 0.3, min_runs=3)
        clear_t = best_time(clearing, per_size * 0.5, min_runs=1)
        full_t = best_time(clearing_and_trades, per_size * 0.2, min_runs=1)
        got = clear_interval(shuffled, ZONE, START, 900, rules)
        assert got.hash == clear_interval(book, ZONE, START, 900, rules).hash, "clearing depends on arrival order"
        print(f"{n:>8,} {clear_t:>8.3f} {n / clear_t:>12,.0f} {n / base_t:>20,.0f} {base_t / clear_t:>7.3f}"
              f" {full_t:>10.3f} {len(got.trades):>7,}"
              f" {got.volume_wh:>12,} {got.price_sat_per_kwh!s:>6} {got.hash.hex()[:16]:>18}")
    # What collecting costs: decode + signature check per order.
    sample = books[max(sizes)][:10_000]
    encoded = [so.encoded for so in sample]
    verify_t = best_time(lambda: [decode_order(e) for e in encoded], per_size * 0.5, min_runs=1, max_runs=3)
    base_t = best_time(lambda: sorted(sample, key=lambda so: so.order.limit_sat_per_kwh), 0.5, min_runs=3)
    print(f"verify: {len(encoded) / verify_t:,.0f} orders/s decoded and signature-checked"
          f" (ratio to sorting the same orders {base_t / verify_t:.4f})")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
