"""Run every benchmark in bench/ with one command.

    python bench/run_all.py [--only NAME ...]

Each bench_<area>.py runs as its own process (so one's memory or threads
cannot skew another) and prints its figures with ratios to a baseline
measured in the same run. The whole set is bounded in time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="benchmark names (e.g. ingest firmware)")
    args = ap.parse_args()
    benches = sorted(HERE.glob("bench_*.py"))
    if args.only:
        benches = [b for b in benches if b.stem.removeprefix("bench_") in args.only]
    failed = []
    for bench in benches:
        print(f"=== {bench.stem.removeprefix('bench_')} ===", flush=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(bench)], timeout=900)
        print(f"({time.time() - t0:.0f} s)\n", flush=True)
        if proc.returncode != 0:
            failed.append(bench.stem)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
