"""Flash wear of the firmware's storage, as an ESP32 runs it.

    python bench/bench_flash.py [--capacity 1536] [--after-wrap 3072] [--away 3072]

Runs in the esp32-like MicroPython (32-bit, LittleFS2; ../shared's
micropython-esp32like, used where it lies). Each design gets a fresh
LittleFS2 filesystem mounted on ../shared's CountingBdev (an ESP32 'vfs'
partition's geometry: 512 blocks of 4096 bytes, 2 MB; every erase counted
per block, every programmed byte counted), holding a config and a key as a
flashed board's does, and is driven as edge/firmware.py drives it: each
reading (a real signed reading from shared/reading.py with a PZEM-004T's
records: 256 bytes, 288 on flash with its header) is
pushed to the outbox before it is sent, the journal is saved every
`persist_every` readings (the default) and after a merge, and with the
coordinator up each reading is acknowledged (peek, pop) after it is
written. Phases:

  fill         `capacity` readings, coordinator up (the old ring's file grows)
  after wrap   --after-wrap readings, coordinator up (the old ring writes in
               the middle of its file from here on)
  away, fill   `capacity` readings with the coordinator away (pending grows)
  away, full   --away readings more: the outbox is full and merges

The design measured is the firmware's (edge/outbox.py, edge/journal.py);
the baseline, in the same run on the same block device, is firmware 0.2's
design, kept below as OLD_DESIGN: a fixed-size ring of 512-byte slots in
one file and a two-slot journal in one file, both written in place.

Projected life is at one reading every 10 s (3,153,600 readings a year) to
100,000 erase cycles. The figure that counts is from the erases spread over
the blocks in rotation: LittleFS allocates blocks by walking round the
whole partition (its lookahead allocator starts where the last allocation
ended), so every block not pinned by a file that never changes takes its
turn, and a metadata pair moves to other blocks after 100 erases (block_cycles
= 100 in MicroPython's VfsLfs2). The most-erased block's own rate in this
short run is printed too: it is a metadata block that has not yet been
moved, so projecting from it is a lower bound, not the expected life.
Measured over a long run (--after-wrap 120000: 126,144 readings, 35 days
at 10 s): mean 282 erases per block, the most-erased 370 (excess 88, as
after 36,000 readings: 96), the ten most-erased within 365..370. The
excess stays about one metadata tour while the mean grows; even the
most-erased block's rate over that run (370 / 126,144 readings) gives
10.8 years, and the levelled rate 14.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from microgrid.flash.unix_port import MicroPythonNotFound, find_micropython

REPO = Path(__file__).resolve().parent.parent
READINGS_PER_YEAR = 365 * 24 * 3600 // 10
CYCLES = 100_000

# Firmware 0.2's storage (edge/outbox.py and edge/journal.py before the
# segment design), reduced to what decides its flash writes: the same
# record bytes, written at the same offsets of the same files.
OLD_DESIGN = """
import binascii
from edge.outbox import _be
from edge.journal import encode_slot
SLOT_SIZE = 512


def encode_record(seq, imp, exp, m):
    # 0.2's slot, layout version 1: 28-byte header, message, CRC-32.
    out = bytearray([0xA7, 1]) + _be(seq, 8) + _be(imp, 8) + _be(exp, 8) + _be(len(m), 2) + m
    return out + _be(binascii.crc32(out) & 0xFFFFFFFF, 4)


def decode_header(raw):
    n = (raw[26] << 8) | raw[27]
    return int.from_bytes(raw[2:10], "big"), 0, 0, bytes(raw[28:28 + n])


class OldRegion:
    def __init__(self, path, size):
        self.size = size
        try:
            os.stat(path)
        except OSError:
            open(path, "wb").close()
        self.f = open(path, "r+b")

    def read(self, offset, n):
        self.f.seek(offset)
        d = self.f.read(n)
        return d + b"\\xff" * (n - len(d))

    def write(self, offset, data):
        self.f.seek(offset)
        self.f.write(data)
        self.f.flush()


class OldOutbox:
    # 0.2's ring: head and count in RAM, slot head*512 written in place.
    def __init__(self, path, capacity):
        self.capacity = capacity
        self.region = OldRegion(path, capacity * SLOT_SIZE)
        self.head = 0
        self.count = 0
        self.acked = 0
        self.covered_from = None

    def push(self, seq, message, imp, exp):
        rec = encode_record(seq, imp, exp, message)
        merged = None
        if self.count >= self.capacity:
            old = self.peek()
            self.count -= 1
            merged = old[0] if old else None
            if self.covered_from is None and old:
                self.covered_from = old[0]
        self.region.write(self.head * SLOT_SIZE, rec)
        self.head = (self.head + 1) % self.capacity
        self.count += 1
        return merged

    def peek(self):
        if not self.count:
            return None
        s = (self.head - self.count) % self.capacity
        r = decode_header(self.region.read(s * SLOT_SIZE, SLOT_SIZE))
        return (r[0], r[3], r[0])

    def pop(self, seq):
        self.count -= 1
        self.acked = seq
        self.covered_from = None
        return True

    def state(self):
        return {"acked": self.acked, "covered_from": self.covered_from}

    def __len__(self):
        return self.count


class OldJournal:
    # 0.2's journal: two 512-byte slots in one file, the older overwritten.
    def __init__(self, path):
        self.region = OldRegion(path, 1024)
        self.gen = 0
        self.slot = 1

    def save(self, state):
        self.gen += 1
        self.slot = 1 - self.slot
        self.region.write(self.slot * 512, encode_slot(self.gen, state))
"""

MP_SCRIPT = """
import gc, json, os, sys, time, vfs
sys.path.insert(0, %(bdev_dir)r)
from countingbdev import CountingBdev
from shared import reading, secp256k1
%(old_design)s

bd = CountingBdev()
vfs.VfsLfs2.mkfs(bd)
vfs.mount(vfs.VfsLfs2(bd), "/flash")
# What a flashed board's filesystem holds besides the storage (frozen
# firmware: config and key only).
with open("/flash/config.json", "w") as f:
    f.write(json.dumps({"device_name": "meter-17", "coordinator_host": "192.168.1.10", "interval_s": 10}))
with open("/flash/device.key", "w") as f:
    f.write("11" * 32)
st = os.statvfs("/flash")
static_blocks = st[2] - st[3]

sk = bytes(range(1, 33))
pub = secp256k1.public_key(sk)
# As a PZEM-004T reading goes out: power, voltage, current, frequency, PF.
extra = [("current", "A", 6.61), ("frequency", "Hz", 49.98), ("power_factor", None, 0.97)]
messages = [reading.build(sk, pub, 100000 + i, 1796283264 + 10 * i, 1234567 + i, 4567, 1520, 231.5, extra)
            for i in range(4)]

design = %(design)r
capacity = %(capacity)d
persist_every = %(persist_every)d
if design == "new":
    from edge.outbox import Outbox
    from edge.journal import Journal
    journal = Journal("/flash/state")
    journal.load()
    outbox = Outbox("/flash/outbox", capacity, 0, None)
else:
    journal = OldJournal("/flash/state")
    outbox = OldOutbox("/flash/outbox", capacity)

seq = 0
imp = 1000
saves = 0
def persist():
    global saves
    s = {"seq": seq, "import_wh": imp, "export_wh": 4567}
    s.update(outbox.state())
    journal.save(s)
    saves += 1

def run(n, up, spread=False):
    # edge/firmware.py's measure() and send_one(), storage calls only.
    global seq, imp
    for i in range(n):
        if spread:
            # The 0.2 ring, sampled: its head at n positions spread evenly
            # over one revolution (what a write costs depends only on it).
            outbox.head = i * capacity // n
        seq += 1
        imp += 3
        merged = outbox.push(seq, messages[seq %% 4], imp, 4567)
        if merged is not None:
            persist()
        elif seq %% persist_every == 0:
            persist()
        if up:
            item = outbox.peek()
            outbox.pop(item[0])

phases = []
for name, n, up in %(phases)s:
    e0 = list(bd.erases)
    p0 = bd.programmed
    s0 = saves
    t0 = time.ticks_ms()
    run(n, up, design == "old" and name != "fill")
    ms = time.ticks_diff(time.ticks_ms(), t0)
    d = [bd.erases[i] - e0[i] for i in range(len(e0))]
    phases.append({"name": name, "readings": n, "erases": sum(d), "max_block": max(d),
                   "total_max": max(bd.erases), "total_erases": sum(bd.erases),
                   "programmed": bd.programmed - p0, "saves": saves - s0, "ms": ms, "pending": len(outbox)})
    gc.collect()
st = os.statvfs("/flash")
print(json.dumps({"design": design, "phases": phases, "blocks": st[2], "static_blocks": static_blocks,
                  "erases_by_block": bd.erases, "message_bytes": len(messages[0]), "free_blocks": st[3]}))
"""


def run_design(mp: str, design: str, args: argparse.Namespace, bdev_dir: str) -> dict:
    if design == "new":
        phases = [("fill", args.capacity, True), ("after wrap", args.after_wrap, True),
                  ("away, fill", args.capacity, False), ("away, full", args.away, False)]
    else:
        # The 0.2 ring rewrites ~400 KB per reading once wrapped (minutes for
        # one revolution here), and where it writes does not depend on
        # acknowledgements (slot `head`, always): after its wrap it is
        # measured at --baseline-readings head positions spread evenly over
        # one revolution, which stands for every phase after the wrap.
        phases = [("fill", args.capacity, True), ("after wrap", args.baseline_readings, True)]
    script = MP_SCRIPT % {"bdev_dir": bdev_dir, "old_design": OLD_DESIGN if design == "old" else "",
                          "design": design, "capacity": args.capacity, "persist_every": args.persist_every,
                          "phases": repr(phases)}
    env = dict(os.environ, MICROPYPATH=f".frozen:{REPO}")
    proc = subprocess.run([mp, "-X", "heapsize=12M", "-c", script], capture_output=True, text=True,
                          env=env, cwd=str(REPO), timeout=800)
    if proc.returncode != 0:
        raise SystemExit(f"{design} design failed in the esp32-like MicroPython:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def years_levelled(erases_per_reading: float, rotating_blocks: int) -> float:
    return CYCLES * rotating_blocks / (erases_per_reading * READINGS_PER_YEAR)


def years_at_rate(per_reading: float) -> float:
    return CYCLES / (per_reading * READINGS_PER_YEAR) if per_reading else float("inf")


def main() -> int:
    from microgrid.edge.config import DEFAULTS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capacity", type=int, default=DEFAULTS["outbox_size"], help="outbox_size (default: the config's)")
    ap.add_argument("--persist-every", type=int, default=DEFAULTS["persist_every"])
    ap.add_argument("--after-wrap", type=int, default=2 * DEFAULTS["outbox_size"], help="readings after the wrap, coordinator up")
    ap.add_argument("--away", type=int, default=2 * DEFAULTS["outbox_size"], help="readings merged with the coordinator away")
    ap.add_argument("--baseline-readings", type=int, default=96, help="head positions sampled after the 0.2 ring's wrap")
    args = ap.parse_args()
    try:
        mp = find_micropython("esp32like")
    except MicroPythonNotFound as e:
        print(f"flash benchmark needs the esp32-like MicroPython: {e}")
        return 1
    bdev_dir = str(Path(mp).resolve().parent.parent)  # ../shared/micropython-esp32like, where countingbdev.py lies
    t0 = time.time()
    with ThreadPoolExecutor(2) as pool:
        new_f = pool.submit(run_design, mp, "new", args, bdev_dir)
        old_f = pool.submit(run_design, mp, "old", args, bdev_dir)
        new, old = new_f.result(), old_f.result()
    print(f"flash benchmark: LittleFS2 on CountingBdev ({new['blocks']} blocks of 4096 bytes), esp32-like MicroPython, "
          f"outbox_size {args.capacity}, persist_every {args.persist_every}, signed readings of "
          f"{new['message_bytes']} bytes ({time.time() - t0:.0f} s)")
    print(f"  {'phase':<12} {'readings':>12} {'erases/reading':>26}   {'KB programmed/reading':>29}   {'most-erased block, per reading':>30}")
    print(f"  {'':<12} {'new/0.2':>12} {'segments':>8} {'0.2 ring':>8} {'ratio':>8}   {'segments':>9} {'0.2 ring':>9} {'ratio':>9}   {'segments':>9} {'0.2 ring':>9} {'ratio':>9}")
    for a in new["phases"]:
        b = old["phases"][0 if a["name"] == "fill" else 1]
        n, m = a["readings"], b["readings"]
        ea, eb = a["erases"] / n, b["erases"] / m
        pa, pb = a["programmed"] / n / 1024, b["programmed"] / m / 1024
        ma, mb = a["max_block"] / n, b["max_block"] / m
        print(f"  {a['name']:<12} {n:>6}/{m:<5} {ea:>8.2f} {eb:>8.1f} {eb / ea:>7.0f}x   {pa:>9.2f} {pb:>9.1f} {pb / pa:>8.0f}x   "
              f"{ma:>9.4f} {mb:>9.3f} {mb / ma:>8.0f}x")
    # Life from the phases after the wrap (coordinator up, and away/merging).
    later = [p for p in new["phases"] if p["name"] != "fill"]
    later_old = [p for p in old["phases"] if p["name"] != "fill"]
    e_new = sum(p["erases"] for p in later) / sum(p["readings"] for p in later)
    e_old = sum(p["erases"] for p in later_old) / sum(p["readings"] for p in later_old)
    rotating = new["blocks"] - new["static_blocks"]
    y_new, y_old = years_levelled(e_new, rotating), years_levelled(e_old, rotating)
    print(f"  after the wrap: {e_new:.2f} erases per reading (0.2 ring: {e_old:.1f}, {e_old / e_new:.0f}x more); "
          f"target <= 1.5: {'met' if e_new <= 1.5 else 'NOT MET'}")
    print(f"  projected life at one reading per 10 s, 100,000 cycles, erases levelled over the {rotating} blocks in rotation "
          f"(all but the {new['static_blocks']} in use before the run: root directory, config and key): "
          f"{y_new:.1f} years (0.2 ring: {y_old:.2f} years = {y_old * 365:.0f} days; ratio {y_new / y_old:.0f}x); "
          f"target >= 10 years: {'met' if y_new >= 10 else 'NOT MET'}")
    er = new["erases_by_block"]
    used = [x for x in er if x]
    mean = sum(er) / rotating
    print(f"  wear spread over the whole run ({sum(p['readings'] for p in new['phases'])} readings): "
          f"{len(used)} of {new['blocks']} blocks erased, mean {mean:.1f}, max {max(er)} "
          f"(0.2 ring: mean {sum(old['erases_by_block']) / rotating:.1f}, max {max(old['erases_by_block'])})")
    excess = ", ".join(f"{p['total_max'] - p['total_erases'] / rotating:.0f}" for p in new["phases"])
    print(f"  most-erased block minus the mean at the end of each phase: {excess} erases; bounded by LittleFS's "
          f"block_cycles (100: a metadata pair moves to other blocks after 100 erases), while the mean grows by "
          f"{e_new * READINGS_PER_YEAR / rotating:.0f} a year")
    worst = max(max(p["max_block"] / p["readings"] for p in later), 1e-12)
    worst_old = max(p["max_block"] / p["readings"] for p in later_old)
    print(f"  most-erased block's own rate after the wrap, in this short run: {worst:.4f} erases per reading -> "
          f"{years_at_rate(worst):.1f} years if that block stayed the hot metadata block for ever (0.2 ring: {worst_old:.3f} -> "
          f"{years_at_rate(worst_old) * 365:.0f} days); it does not (above), so the levelled figure is the expected life")
    ok = e_new <= 1.5 and y_new >= 10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
