"""Flash that lasts: the firmware's outbox and journal on LittleFS2 with an
ESP32 partition's geometry keep their erases per reading bounded once the
outbox has recycled its space, with the coordinator up and away (merging);
an `outbox_size` the flash cannot hold is refused by `config set` and run
at the largest size that fits at boot, naming it, and the meter measures on."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from microgrid.flash.unix_port import find_esp32like, find_micropython

from ..conftest import REPO, run_micropython

WEAR = """
import json, os, sys, vfs
sys.path.insert(0, %(bdev_dir)r)
from countingbdev import CountingBdev
from edge.outbox import Outbox
from edge.journal import Journal
bd = CountingBdev()
vfs.VfsLfs2.mkfs(bd)
vfs.mount(vfs.VfsLfs2(bd), "/flash")
capacity = %(capacity)d
journal = Journal("/flash/state")
journal.load()
outbox = Outbox("/flash/outbox", capacity)
message = b"r" * 300  # a signed reading's size
seq = 0
def run(n, up):
    # As edge/firmware.py stores: push, persist every 10 and after a merge.
    global seq
    for _ in range(n):
        seq += 1
        merged = outbox.push(seq, message, 3 * seq, 0)
        if merged is not None or seq %% 10 == 0:
            s = {"seq": seq, "import_wh": 3 * seq, "export_wh": 0}
            s.update(outbox.state())
            journal.save(s)
        if up:
            outbox.pop(outbox.peek()[0])
out = []
for n, up in ((capacity, True), (%(after)d, True), (capacity, False), (%(away)d, False)):
    e0 = sum(bd.erases)
    run(n, up)
    out.append((sum(bd.erases) - e0) / n)
print(json.dumps([out, max(bd.erases), len(outbox)]))
"""


def test_erases_per_reading_stay_bounded_after_the_wrap_and_while_merging(mp_runtime: str) -> None:
    if mp_runtime != "esp32like":
        pytest.skip("the counting block device is measured in the esp32-like build (LittleFS2 as on an ESP32)")
    bdev_dir = str(Path(find_esp32like()).resolve().parent.parent)
    capacity, after, away = 256, 2000, 1000
    script = WEAR % {"bdev_dir": bdev_dir, "capacity": capacity, "after": after, "away": away}
    # The counting block device keeps its 2 MB in the heap.
    proc = subprocess.run([find_micropython(), "-X", "heapsize=8M", "-c", script], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, MICROPYPATH=f".frozen:{REPO}"), cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    per_phase, most, pending = json.loads(proc.stdout.strip().splitlines()[-1])
    fill, past_wrap, away_fill, merging = per_phase
    assert pending == capacity
    # One erase per reading (LittleFS copies the last block of an appended
    # file) plus metadata commits: nowhere near firmware 0.2's ring, which
    # rewrote the file after the written slot (tens of erases per reading).
    for rate in per_phase:
        assert rate <= 1.5, per_phase
    # Wear spreads: no block took more than a small share of the erases.
    readings = 2 * capacity + after + away
    assert most < 0.05 * readings, most


def test_an_outbox_size_the_flash_cannot_hold_is_refused_and_the_meter_runs_with_what_fits(tmp_path: Path) -> None:
    out = run_micropython("""
import json, os, sys, vfs
from edge import config as config_mod
from edge.firmware import Firmware
from edge.console import Console
from edge.outbox import Outbox, MAX_MESSAGE


class RamBdev:
    # 64 blocks of 4096 bytes (256 KB): no room for 100,000 readings.
    def __init__(self, bs=4096, n=64):
        self.bs, self.n = bs, n
        self.erased = b"\\xff" * bs
        self.data = bytearray(bs * n)

    def readblocks(self, block, buf, off=0):
        a = block * self.bs + off
        buf[:] = self.data[a:a + len(buf)]

    def writeblocks(self, block, buf, off=0):
        a = block * self.bs + off
        self.data[a:a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        if op == 6:
            self.data[arg * self.bs:(arg + 1) * self.bs] = self.erased
            return 0


bd = RamBdev()
vfs.VfsLfs2.mkfs(bd)
vfs.mount(vfs.VfsLfs2(bd), "/flash")
with open("/flash/device.key", "w") as f:
    f.write("11" * 32)
path = "/flash/config.json"
config_mod.save_raw(path, {"key_file": "/flash/device.key", "state_file": "/flash/state",
                           "outbox_file": "/flash/outbox", "outbox_size": 100000, "clock_start": 1796283264})
fw = Firmware(config_mod.load(path), path)
measured = [fw.measure() for _ in range(5)]
boot = [fw.outbox.capacity, fw.errors.counts["flash"], fw.errors.last]
console = Console(fw)
console.handle("config set outbox_size 50000")
refused = config_mod.load_raw(path)["outbox_size"]
console.handle("config set outbox_size 200")
accepted = config_mod.load_raw(path)["outbox_size"]
fw.outbox.close()
# What was named as fitting does fit: fill it with the largest readings,
# coordinator away, and merge well past it.
fits = boot[0]
o = Outbox("/flash/outbox", fits)
failed = None
for s in range(1000, 1000 + 2 * fits):
    try:
        o.push(s, b"m" * MAX_MESSAGE, s, 0)
    except OSError as e:
        failed = [s, str(e)]
        break
print(json.dumps([measured, boot, refused, accepted, failed, len(o)]))
""")
    lines = out.strip().splitlines()
    measured, boot, refused, accepted, failed, pending = json.loads(lines[-1])
    fits, flash_errors, last = boot
    # At boot: the error names the size that fits, the meter runs with it.
    assert measured == [True] * 5
    assert 32 <= fits < 500 and flash_errors == 1
    assert last.startswith("flash: outbox_size 100000 needs ") and last.endswith(f"KB for the outbox: at most {fits} fits")
    assert any(f"running with outbox_size {fits}" in line for line in lines), out
    # config set: refused naming what fits now (the meter's own files took
    # a few blocks since boot), nothing saved.
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: config outbox_size 50000 needs "), out
    now = int(errors[0].split("at most ")[1].split()[0])
    assert fits - 64 <= now <= fits and errors[0].endswith(f"at most {now} fits"), out
    assert refused == 100000 and accepted == 200
    # The size named as fitting holds the largest readings, merging included.
    assert failed is None and pending == fits
