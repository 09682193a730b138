"""Firmware sign time and peak heap, in the MicroPython unix port.

    python bench/bench_firmware.py [--count 200]

Measures, in one run: building and signing a complete reading message in
MicroPython with the precomputed generator table (unix port, boards with
PSRAM) and without it (bare ESP32, the table does not fit), the same in
CPython with our pure-Python signer, and the baseline: bitcoinx
(libsecp256k1, C) signing the same messages. Peak heap is the smallest
MicroPython heap in which importing, deriving the key and signing readings
succeeds (found by bisection over -X heapsize). A board is slower than this
machine by a roughly constant factor (an ESP32 at 240 MHz is about 50-100x
slower than one x86 core for big-integer code); the ratios carry over.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bitcoinx import PrivateKey

from microgrid.flash.unix_port import find_micropython
from microgrid.shared import cose, reading, secp256k1

REPO = Path(__file__).resolve().parent.parent

MP_SCRIPT = """
import gc, time, json, micropython
from shared import secp256k1, reading
secp256k1.USE_G_TABLE = %(table)s
sk = bytes(range(1, 33))
gc.collect()
base = gc.mem_alloc()
pub = secp256k1.public_key(sk)  # the table, if used, is built here
reading.build(sk, pub, 0, 1700000000, 0, 0, 0, 230.0)
gc.collect()
after_setup = gc.mem_alloc()
n = %(count)d
t0 = time.ticks_us()
for i in range(n):
    reading.build(sk, pub, i + 1, 1700000000 + i, 1000 + i, i // 2, 500, 230.5)
us = time.ticks_diff(time.ticks_us(), t0)
t0 = time.ticks_us()
for i in range(0, n, 3):
    reading.build_batch(sk, pub, [(i + k + 1, 1700000000 + i + k, 1000 + i + k, 0, 500, 230.5, None) for k in range(3)])
us_batch = time.ticks_diff(time.ticks_us(), t0)
print(json.dumps({"us_per_reading": us / n, "us_per_reading_batched": us_batch / (3 * len(range(0, n, 3))),
                  "resident_bytes": after_setup - base}))
"""

HEAP_PROBE = """
from shared import secp256k1, reading
secp256k1.USE_G_TABLE = %(table)s
sk = bytes(range(1, 33))
pub = secp256k1.public_key(sk)
for i in range(3):
    reading.build(sk, pub, i + 1, 1700000000 + i, 1000 + i, i // 2, 500, 230.5, [("current", "A", 2.5)])
print("ok")
"""


def compiled_shared() -> str:
    """shared/ compiled with mpy-cross into a temporary folder, as the
    flashed image carries it (no source compiled in RAM)."""
    import tempfile

    from microgrid.flash.build import find_mpy_cross

    out = Path(tempfile.mkdtemp(prefix="mpy-")) / "shared"
    out.mkdir()
    for src in (REPO / "shared").glob("*.py"):
        subprocess.run([find_mpy_cross(), "-o", str(out / (src.stem + ".mpy")), str(src)], check=True)
    return str(out.parent)


def min_heap_bytes(table: bool, path: str | None = None) -> int:
    """Smallest MicroPython heap (to 1 KB) in which the firmware's imports,
    key derivation and reading signing run: the peak heap it needs."""
    env = dict(os.environ, MICROPYPATH=f".frozen:{path or REPO}")
    lo, hi = 4 * 1024, 8 * 1024 * 1024
    while hi - lo > 1024:
        mid = (lo + hi) // 2
        # The working directory is first on the path: run where the modules are.
        r = subprocess.run([find_micropython(), "-X", f"heapsize={mid}", "-c", HEAP_PROBE % {"table": table}],
                           capture_output=True, text=True, env=env, timeout=600, cwd=path or str(REPO))
        if r.returncode == 0 and r.stdout.strip().endswith("ok"):
            hi = mid
        else:
            lo = mid
    return hi



def run_mp(table: bool, count: int) -> dict:
    env = dict(os.environ, MICROPYPATH=f".frozen:{REPO}")
    out = subprocess.run(
        [find_micropython(), "-X", "heapsize=4M", "-c", MP_SCRIPT % {"table": table, "count": count}],
        capture_output=True, text=True, env=env, timeout=600, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200)
    args = ap.parse_args()
    n = args.count

    sk = bytes(range(1, 33))
    pub = secp256k1.public_key(sk)
    key = PrivateKey(sk)
    protected = cose.encode_protected(reading.ALG_ES256K, reading.key_id(pub))
    payloads = [reading.encode_payload(reading.device_id(pub), i + 1, 1_700_000_000 + i, 1000 + i, i // 2, 500, 230.5) for i in range(n)]

    t0 = time.perf_counter()
    for p in payloads:
        sig = key.sign_recoverable(cose.sig_structure(protected, p))[:64]
        cose.build(protected, p, sig)
    baseline_us = (time.perf_counter() - t0) / n * 1e6

    t0 = time.perf_counter()
    for i in range(n):
        reading.build(sk, pub, i + 1, 1_700_000_000 + i, 1000 + i, i // 2, 500, 230.5)
    cpython_us = (time.perf_counter() - t0) / n * 1e6

    with_table = run_mp(True, n)
    without = run_mp(False, max(n // 4, 10))
    with_table["peak_bytes"] = min_heap_bytes(True)
    without["peak_bytes"] = min_heap_bytes(False)
    flashed_peak = min_heap_bytes(False, compiled_shared())

    print(f"firmware benchmark: {n} readings built and signed")
    print(f"  baseline: bitcoinx (libsecp256k1, C) in CPython   {baseline_us:9.1f} us/reading")
    print(f"  shared/ signer in CPython                         {cpython_us:9.1f} us/reading   ratio {cpython_us / baseline_us:7.1f}x")
    print(f"  MicroPython unix port, generator table            {with_table['us_per_reading']:9.1f} us/reading   ratio {with_table['us_per_reading'] / baseline_us:7.1f}x"
          f"   table resident {with_table['resident_bytes'] / 1024:.0f} KB, peak heap {with_table['peak_bytes'] / 1024:.0f} KB")
    print(f"  MicroPython unix port, no table (bare ESP32 mode) {without['us_per_reading']:9.1f} us/reading   ratio {without['us_per_reading'] / baseline_us:7.1f}x"
          f"   resident {without['resident_bytes'] / 1024:.0f} KB, peak heap {without['peak_bytes'] / 1024:.0f} KB")
    print(f"  peak heap as flashed (.mpy modules, no table): {flashed_peak / 1024:.0f} KB (target < 48 KB; from .py sources "
          f"{without['peak_bytes'] / 1024:.0f} KB, ratio {without['peak_bytes'] / flashed_peak:.2f})")
    print(f"  ... batches of 3 (batch_size = 3), no table      {without['us_per_reading_batched']:9.1f} us/reading   ratio {without['us_per_reading_batched'] / baseline_us:7.1f}x"
          f"   ({without['us_per_reading'] / without['us_per_reading_batched']:.1f}x faster than one signature per reading)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
