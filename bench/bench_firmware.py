"""Firmware sign time and peak heap, in the MicroPython unix port.

    python bench/bench_firmware.py [--count 200] [--loop-readings 30]
    python bench/bench_firmware.py --esp32like-only [--no-mpy-baseline]
    python bench/bench_firmware.py --update-only

Measures, in one run: building and signing a complete reading message in
MicroPython with the precomputed generator table (unix port, boards with
PSRAM) and without it (bare ESP32, the table does not fit), the same in
CPython with our pure-Python signer, and the baseline: bitcoinx
(libsecp256k1, C) signing the same messages. Peak heap is the smallest
MicroPython heap in which importing, deriving the key and signing readings
succeeds (found by bisection over -X heapsize). A board is slower than this
machine by a roughly constant factor (an ESP32 at 240 MHz is about 50-100x
slower than one x86 core for big-integer code); the ratios carry over.

The peak heap of the whole firmware as flashed is found the same way: the
image `microgrid flash --target dir:` writes for the unix port (.mpy
modules compiled by flash/build.py, main.py, config.json) boots with
`micropython -X heapsize=N main.py` and runs its main loop (reads the
simulated meter, signs, sends --loop-readings readings over CoAP/UDP to a
real coordinator on 127.0.0.1), and must exit 0 with a SUMMARY showing every
reading delivered and none pending, the coordinator holding them all. Each
trial is a freshly flashed meter (a copy of the same image and a new key
registered with the coordinator), so every trial starts from the same
persisted state (no journal, no outbox) whatever ran before it. The same
whole-loop peak is measured as an ESP32 runs it: in the esp32-like build
(32-bit; ../shared/micropython-esp32like), with the PZEM driver (its UART
scripted) and the console loaded and answering `status` and `selftest`,
the firmware frozen into the binary (flash/frozen.py builds it with
edge/manifest.py; only main.py, config and key are files), against the
baseline of the same firmware as .mpy files on the filesystem of the stock
esp32-like build. A run counts only if the console answered too: `status`,
and `selftest` with its key, signature (a reading signed and verified: the
peak) and meter checks. Target: frozen <= 48 KB. The same frozen
firmware is measured again with its link under OSCORE, as `microgrid
flash --installer-context` provisions it (oscore.json on the board, the
coordinator's side of the context in its contexts folder, and the
coordinator refusing readings in clear, so every stored reading came over
OSCORE and was acknowledged over it), against the run in clear as its
baseline; target also <= 48 KB. The esp32-like build has no `cryptolib`,
so there the link runs the plain-Python AES (shared/aes_soft.py), which a
board does not load. What is counted: the
unix port's scripted hardware layer (a test stand-in) is in the heap as
the firmware's tests have it; the bench prints its cost beside that of
edge/hal/board.py, which a board imports instead. Near the
limit a run succeeds or not with the heap's fragmentation, which follows
the timing: the figure is the heap where the loop ran every time (three
runs at each bisection step, ten more at the end), and the few KB below it
where it runs only sometimes are printed with their success counts.

A full-size firmware update (a 1.5 MB release, 384 chunks, made with
`microgrid release` and served by a real coordinator over CoAP Block2) is
measured the same way in the frozen esp32-like build: the smallest heap in
which a freshly flashed meter, booted again after each reboot the update
asks for (to check the offer, to switch), ends on the new image confirmed
with every reading stored once and in order and no MemoryError; with the
simulated meter and with the PZEM driver and the console (answering
`status` and `update` at every boot), against the firmware's metering peak
measured in the same run (--update-only: the two update figures alone).
Target: <= 48 KB.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from bitcoinx import PrivateKey

from microgrid.flash import frozen
from microgrid.flash.unix_port import find_esp32like, find_micropython
from microgrid.processes import CoordinatorProcess, free_udp_port
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


def bisect_heap(runs: Callable[[int], bool], lo: int = 4 * 1024, hi: int = 8 * 1024 * 1024) -> int:
    """Smallest heap in lo..hi (to 1 KB) for which `runs(heap)` holds,
    taking it to hold at hi and to fail at lo."""
    while hi - lo > 1024:
        mid = (lo + hi) // 2
        if runs(mid):
            hi = mid
        else:
            lo = mid
    return hi


def min_heap_bytes(table: bool, path: str | None = None) -> int:
    """Smallest MicroPython heap (to 1 KB) in which the firmware's imports,
    key derivation and reading signing run: the peak heap it needs."""
    env = dict(os.environ, MICROPYPATH=f".frozen:{path or REPO}")

    def runs(heap: int) -> bool:
        # The working directory is first on the path: run where the modules are.
        r = subprocess.run([find_micropython(), "-X", f"heapsize={heap}", "-c", HEAP_PROBE % {"table": table}],
                           capture_output=True, text=True, env=env, timeout=600, cwd=path or str(REPO))
        return r.returncode == 0 and r.stdout.strip().endswith("ok")

    return bisect_heap(runs)


# -- the whole firmware as flashed, against a real coordinator ---------------

COORDINATOR_START_S = 30.0
LOOP_TRIAL_TIMEOUT_S = 120.0
LOOP_REPEATS = 3  # runs in a row a bisection step needs
LOOP_CONFIRM = 10  # further runs in a row at the heap found
LOOP_BAND_TRIALS = 5  # runs at each heap below it
LOOP_MAX_STEPS = 16  # 1 KB steps, up to confirm or down through the band


# The esp32-like runs: the firmware with the PZEM driver (its UART scripted
# with a recorded frame) and the console, which answers two commands.
PZEM = {"type": "pzem004t", "uart": {"id": 2}}
CONSOLE_INPUT = "status\nselftest\n"
CONSOLE_ANSWERS = ("free memory", "PASS key", "PASS signature", "PASS meter")
ESP32LIKE_TOP = 512 * 1024  # no signer table (it needs > 1 MB free): a bare ESP32


def pzem_script() -> str:
    fixture = json.loads((REPO / "tests" / "edge" / "fixtures" / "pzem004t.json").read_text())
    return json.dumps({"uart": {"2": {"replies": [fixture["cases"][0]["replies"][0]], "repeat": True}}})


def flashed_image(staging: Path, port: int, readings: int, micropython: str | None = None, frozen: bool = False,
                  pzem_console: bool = False) -> Path:
    """The image `microgrid flash --target dir:` builds: config checked as
    the installer checks it, modules compiled with mpy-cross for the .mpy
    version and arch `micropython` reads, or with `frozen` only main.py and
    config (the modules are in the binary). The device key is added per
    trial (see loop_trial)."""
    from microgrid.flash import build, settings
    from microgrid.flash.targets import board, decode_mpy

    micropython = micropython or find_micropython()
    raw: dict = {
        "device_name": "bench-meter",
        "coordinator_port": port,
        "interval_s": 0.005,
        "clock_start": 1_700_000_000,
        "clock_speed": 60,
        "ack_timeout_s": 0.2,
        "retry_after_s": 0.2,
        "drain_timeout_s": 20,
        "max_readings": readings,
        "meter": {"type": "simulated", "profile": "prosumer", "seed": 3},
    }
    if pzem_console:
        raw.update(meter=PZEM, console=True)
    settings.validate(raw, "unix")
    if frozen:
        staging.mkdir(parents=True)
        manifest = build.build(staging, settings.to_json(raw), board("unix"), None, False, frozen=True)
        assert list(manifest.files) == ["main.py"]
        (staging / "hal_script.json").write_text(pzem_script())
        return staging
    out = subprocess.run([micropython, "-c", "import sys; print(sys.implementation._mpy)"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    version, sub, arch = decode_mpy(int(out.strip()))
    mpy_cross = build.find_mpy_cross()
    if f"{version}.{sub}" != build.mpy_cross_version(mpy_cross):
        # `microgrid flash` would copy .py sources then: not the figure wanted.
        raise RuntimeError(f"micropython reads .mpy v{version}.{sub}, mpy-cross emits "
                           f"v{build.mpy_cross_version(mpy_cross)}: the image cannot be compiled as flashed")
    staging.mkdir(parents=True)
    manifest = build.build(staging, settings.to_json(raw), board("unix"), arch, True, mpy_cross)
    assert manifest.mpy and all(rel == "main.py" or rel.endswith(".mpy") for rel in manifest.files)
    if pzem_console:
        (staging / "hal_script.json").write_text(pzem_script())
    return staging


# With OSCORE: the coordinator refuses readings in clear, so a reading
# stored is one that came over OSCORE and was acknowledged over it.
OSCORE_CONFIG = '[link]\ncontexts_dir = "%s"\nunprotected_readings = "refuse"\n'
OSCORE_LOG = "link protected by OSCORE"


def provision_oscore(contexts: Path, folder: Path, pub: bytes) -> None:
    """A new OSCORE context for the meter with key `pub`, as `microgrid
    flash --installer-context` provisions one: the coordinator's side in
    its contexts folder (a running coordinator finds it at the meter's
    first request), the meter's in the image's oscore.json."""
    import secrets

    from microgrid.coordinator.link.contexts import METER_KID_BYTES, METERS, SERVER_ID, write_context_dir

    device = reading.device_id(pub)
    kid = bytes.fromhex(device)[:METER_KID_BYTES]
    secret, salt = secrets.token_bytes(16), secrets.token_bytes(8)
    write_context_dir(contexts / METERS / device, secret, salt, SERVER_ID, kid)
    doc = {"secret": secret.hex(), "salt": salt.hex(), "sender_id": kid.hex(), "recipient_id": SERVER_ID.hex()}
    path = folder / "oscore.json"
    path.write_text(json.dumps(doc) + "\n")
    path.chmod(0o600)


def loop_trial(image: Path, work: Path, db: Path, heap: int, readings: int, micropython: str | None = None,
               stdin: str = "", contexts: Path | None = None) -> tuple[bool, str]:
    """Flash a fresh meter (a copy of `image` and a new registered key,
    and with `contexts` a new OSCORE context registered there), boot it
    with a heap of `heap` bytes and let its main loop run to the end.
    (True, summary) if every reading was delivered and stored."""
    from bitcoinx import PrivateKey

    from microgrid.coordinator.store.database import open_database
    from microgrid.coordinator.store.readings import ReadingStore

    key = PrivateKey.from_random()
    pub = key.public_key.to_bytes(compressed=True)
    store = ReadingStore(open_database(db))
    store.register_device(pub, "bench-meter")
    store.db.close()
    folder = work / f"trial-{heap}-{time.monotonic_ns()}"
    shutil.copytree(image, folder)
    key_path = folder / "device.key"
    key_path.write_text(key.to_bytes().hex() + "\n")
    key_path.chmod(0o600)
    if contexts is not None:
        provision_oscore(contexts, folder, pub)
    # As flash/unix_port.boot runs it: the image folder is the board's filesystem.
    env = dict(os.environ, MICROPYPATH=".frozen:" + str(folder.resolve()))
    try:
        proc = subprocess.run([micropython or find_micropython(), "-X", f"heapsize={heap}", "main.py"], cwd=str(folder),
                              env=env, input=stdin, capture_output=True, text=True, timeout=LOOP_TRIAL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {LOOP_TRIAL_TIMEOUT_S:g} s"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY ")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-2:])
        return False, f"exit {proc.returncode}: {tail}"
    summary = json.loads(lines[-1][len("SUMMARY "):])
    store = ReadingStore(open_database(db))
    stored = store.count(reading.device_id(pub))
    store.db.close()
    ok = (summary["produced"] == summary["delivered"] == stored == readings
          and summary["pending"] == 0 and summary["rejected"] == 0)
    if ok and contexts is not None and OSCORE_LOG not in proc.stdout:
        return False, "the meter did not say its link is protected by OSCORE"
    if ok and stdin:
        # The console answered in that heap: `status`, and `selftest`'s
        # key, signature (signed and verified) and meter checks (its memory
        # check asks for 16 KB free, more than such a heap leaves).
        missing = [want for want in CONSOLE_ANSWERS if want not in proc.stdout]
        if missing:
            return False, "console did not answer %s" % ", ".join(missing)
    return ok, lines[-1]


def whole_loop_peak(readings: int, micropython: str | None = None, frozen: bool = False, pzem_console: bool = False,
                    top: int = 8 * 1024 * 1024, oscore: bool = False) -> tuple[int, int, list[tuple[int, int]]]:
    """Smallest heap (to 1 KB) in which the flashed firmware runs its whole
    main loop against a real coordinator every time: (that heap, the number
    of trials run there, [(heap, successes out of LOOP_BAND_TRIALS)] for the
    heaps below it, down to one where no trial ran).

    Near the limit a run fails or not with the heap's fragmentation, which
    follows the timing (the clock-driven readings, when each answer
    arrives): the bisection asks for LOOP_REPEATS runs in a row at each
    step, the heap found must then pass LOOP_CONFIRM more (else it goes up
    1 KB at a time), and the band below is measured and shown. With
    `oscore` every trial's meter has its own OSCORE context and the
    coordinator refuses readings in clear."""
    with tempfile.TemporaryDirectory(prefix="bench-firmware-") as tmp:
        root = Path(tmp)
        db = root / "coordinator.db"
        port = free_udp_port()
        image = flashed_image(root / "image", port, readings, micropython, frozen, pzem_console)
        stdin = CONSOLE_INPUT if pzem_console else ""
        contexts = None
        config = None
        if oscore:
            contexts = root / "oscore"
            config = root / "coordinator.toml"
            config.write_text(OSCORE_CONFIG % contexts)
        coordinator = CoordinatorProcess(db, port, config, log=root / "coordinator.log").start(COORDINATOR_START_S)
        try:
            def successes(heap: int, trials: int, stop_at_failure: bool) -> int:
                ran = 0
                for _ in range(trials):
                    if coordinator.proc is None or coordinator.proc.poll() is not None:
                        raise RuntimeError(f"the coordinator stopped during the bench; see {coordinator.log_path}")
                    if loop_trial(image, root, db, heap, readings, micropython, stdin, contexts)[0]:
                        ran += 1
                    elif stop_at_failure:
                        break
                return ran

            ok, detail = loop_trial(image, root, db, top, readings, micropython, stdin, contexts)
            if not ok:
                raise RuntimeError(f"the flashed firmware did not complete its loop with an {top // 1024} KB heap: {detail}")
            peak = bisect_heap(lambda heap: successes(heap, LOOP_REPEATS, True) == LOOP_REPEATS, hi=top)
            for _ in range(LOOP_MAX_STEPS):
                if successes(peak, LOOP_CONFIRM, True) == LOOP_CONFIRM:
                    break
                peak += 1024
            else:
                raise RuntimeError(f"no heap up to {peak // 1024} KB ran the loop {LOOP_CONFIRM} times in a row")
            band = []
            heap = peak - 1024
            for _ in range(LOOP_MAX_STEPS):
                ran = successes(heap, LOOP_BAND_TRIALS, False)
                band.append((heap, ran))
                if ran == 0:
                    break
                heap -= 1024
        finally:
            coordinator.stop()
    return peak, LOOP_REPEATS + LOOP_CONFIRM, band


# What the hardware layer costs: imported alone in the frozen binary, the
# unix port's scripted stand-in (which the runs above carry, as the
# firmware's tests do) against edge/hal/board.py, the layer a board runs,
# imported over a stand-in `machine` module that has the classes it names.
HAL_PROBE = """
import gc
import machine
import edge, edge.ticks, edge.log
gc.collect()
a = gc.mem_alloc()
import edge.hal, edge.hal.region
gc.collect()
print(edge.hal.BACKEND, gc.mem_alloc() - a)
"""
STUB_MACHINE = """
class Pin:
    IN = 1
    OUT = 3
    PULL_UP = 1
    IRQ_FALLING = 1
    IRQ_RISING = 2
class UART: pass
class ADC:
    ATTN_11DB = 3
class WDT: pass
class Timer: pass
class RTC: pass
"""


def hal_bytes(binary: str) -> dict[str, int]:
    """Heap taken by importing the hardware layer, by backend."""
    out: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-hal-") as tmp:
        stub = Path(tmp) / "stub"
        stub.mkdir()
        (stub / "machine.py").write_text(STUB_MACHINE)
        for path in (".frozen", f".frozen:{stub}"):
            r = subprocess.run([binary, "-c", HAL_PROBE], capture_output=True, text=True, timeout=60, cwd=tmp,
                               env=dict(os.environ, MICROPYPATH=path), check=True)
            backend, n = r.stdout.split()
            out[backend] = int(n)
    return out


def band_text(band: list[tuple[int, int]]) -> str:
    return ", ".join(f"{heap / 1024:.0f} KB {ran}/{LOOP_BAND_TRIALS}" for heap, ran in band)


def oscore_lines(readings: int, frozen_binary: str, without: tuple[int, int, list[tuple[int, int]]]) -> list[str]:
    """The same frozen firmware with its link under OSCORE, as `microgrid
    flash --installer-context` provisions it: every reading encrypted and
    acknowledged over OSCORE, against `without` (the same run in clear,
    measured in this run)."""
    peak, runs, band = whole_loop_peak(readings, frozen_binary, True, True, ESP32LIKE_TOP, oscore=True)
    met = "met" if peak <= 48 * 1024 else "NOT met"
    return [
        f"    frozen, link under OSCORE (each reading encrypted, acknowledged over OSCORE by the coordinator, which "
        f"refuses readings in clear), in each of {runs} runs: peak heap {peak / 1024:.0f} KB (target <= 48 KB: {met}); "
        f"in clear {without[0] / 1024:.0f} KB, OSCORE costs {(peak - without[0]) / 1024:+.0f} KB, "
        f"ratio {peak / without[0]:.2f}",
        f"    with OSCORE below it the loop runs only sometimes: {band_text(band)}",
    ]


def esp32like_lines(readings: int, baseline: bool = True) -> list[str]:
    """Peak heap as an ESP32 runs the firmware: the esp32-like build
    (32-bit), the firmware frozen into the binary, in clear and with
    OSCORE, against the baseline of the same firmware as .mpy files on the
    filesystem of the stock esp32-like build (unless not `baseline`), all
    measured here."""
    frozen_binary = str(frozen.esp32like_binary())
    frozen_result = whole_loop_peak(readings, frozen_binary, True, True, ESP32LIKE_TOP)
    frozen_peak, frozen_runs, frozen_band = frozen_result
    met = "met" if frozen_peak <= 48 * 1024 else "NOT met"
    hal = hal_bytes(frozen_binary)
    lines = [
        "  esp32-like build (32-bit, as an ESP32), whole firmware with the PZEM driver and the console (answering "
        f"status and selftest), {readings} readings to a coordinator on 127.0.0.1, in each of {frozen_runs} runs:",
        f"    frozen into the binary (filesystem: main.py, config, key): peak heap {frozen_peak / 1024:.0f} KB "
        f"(target <= 48 KB: {met})",
    ]
    if baseline:
        mpy_peak, _, mpy_band = whole_loop_peak(readings, find_esp32like(), False, True, ESP32LIKE_TOP)
        lines += [
            f"    baseline, the same firmware as .mpy files on the filesystem: {mpy_peak / 1024:.0f} KB; "
            f"ratio frozen/baseline {frozen_peak / mpy_peak:.2f}",
            f"    below them the loop runs only sometimes: frozen {band_text(frozen_band)}; .mpy {band_text(mpy_band)}",
        ]
    else:
        lines.append(f"    below it the loop runs only sometimes: {band_text(frozen_band)}")
    lines += oscore_lines(readings, frozen_binary, frozen_result)
    lines += update_lines(frozen_binary, frozen_peak)
    lines.append(
        f"    counted in these runs: the unix port's scripted hardware layer, {hal['scripted'] / 1024:.1f} KB of heap "
        f"imported; a board's (edge/hal/board.py) takes {hal['machine'] / 1024:.1f} KB "
        f"(ratio {hal['scripted'] / hal['machine']:.2f}): on a board the firmware needs "
        f"{(hal['scripted'] - hal['machine']) / 1024:.1f} KB less")
    return lines


# -- a full-size firmware update, as an ESP32 runs it -----------------------

UPDATE_TRIAL_BOOTS = 16
UPDATE_BOOT_TIMEOUT_S = 300.0
UPDATE_READINGS = 40
UPDATE_REPEATS = 1  # trials a bisection step needs (each is a whole update, about a minute)
UPDATE_CONFIRM = 2  # further trials in a row at the heap found


def stand_in_image(version: str, size: int, seed: int) -> bytes:
    """A unix-port slot image: a header naming its version, then bytes."""
    import random

    head = b"MGFW " + json.dumps({"version": version}).encode() + b"\n"
    return head + random.Random(seed).randbytes(size - len(head))


def update_trial(root: Path, frozen_binary: str, heap: int, pzem_console: bool) -> tuple[bool, str]:
    """A freshly flashed frozen meter (the simulated meter, or with
    `pzem_console` the PZEM driver and the console answering `status` and
    `update` at every boot) updated with a full 1.5 MB release
    by a real coordinator while it sends UPDATE_READINGS readings a boot,
    booted again (as a board resets) until the new image is confirmed.
    (True, detail) if it was, with no MemoryError, every reading stored once
    and in order."""
    from microgrid.cli import main as cli_main
    from microgrid.coordinator.store.database import open_database
    from microgrid.coordinator.store.readings import ReadingStore
    from microgrid.flash.image import write_image
    from microgrid.shared.release import MAX_SIZE

    work = root / f"update-{heap}-{time.monotonic_ns()}"
    work.mkdir()
    try:
        key_file = work / "release.key"
        (work / "fw.bin").write_bytes(stand_in_image("0.3.0", MAX_SIZE, 2))
        releases = work / "releases"
        with contextlib.redirect_stdout(io.StringIO()):  # the release tool's own lines
            cli_main(["release", "--new-key", str(key_file)])
            cli_main(["release", "--key", str(key_file), "--image", str(work / "fw.bin"), "--version", "0.3.0",
                      "--board", "unix", "--min-version", "0.2.0", "--out", str(releases)])
        pub = secp256k1.public_key(bytes.fromhex(key_file.read_text().strip()))
        config = work / "coordinator.toml"
        config.write_text(f'[updates]\nenabled = true\nrelease_keys = ["{pub.hex()}"]\nboard = "unix"\n'
                          f'folder = "{releases}"\n')
        db = work / "coordinator.db"
        port = free_udp_port()
        meter_key = PrivateKey.from_random()
        meter_pub = meter_key.public_key.to_bytes(compressed=True)
        store = ReadingStore(open_database(db))
        store.register_device(meter_pub, "bench-meter")
        store.db.close()
        cfg = {"device_name": "bench-meter", "coordinator_port": port, "interval_s": 0.25,
               "clock_start": 1_700_000_000, "clock_speed": 60, "ack_timeout_s": 0.2, "retry_after_s": 0.2,
               "max_readings": UPDATE_READINGS, "meter": {"type": "simulated", "profile": "prosumer", "seed": 3},
               "updates": {"board": "unix", "keys": [pub.hex()]}}
        if pzem_console:
            cfg.update(meter=PZEM, console=True)
        image = write_image(work / "image", cfg, meter_key.to_bytes())
        shutil.rmtree(image / "edge")
        shutil.rmtree(image / "shared")
        (image / "hal_script.json").write_text(pzem_script())
        (image / "ota_0.bin").write_bytes(stand_in_image("0.2.0", 9_000, 1))
        env = dict(os.environ, MICROPYPATH=".frozen:" + str(image.resolve()))
        coordinator = CoordinatorProcess(db, port, config, log=work / "coordinator.log").start(COORDINATOR_START_S)
        log = ""
        try:
            for _ in range(UPDATE_TRIAL_BOOTS):
                proc = subprocess.run([frozen_binary, "-X", f"heapsize={heap}", "main.py"], cwd=str(image), env=env,
                                      input="status\nupdate\n" if pzem_console else "", capture_output=True, text=True,
                                      timeout=UPDATE_BOOT_TIMEOUT_S)
                log += proc.stdout + proc.stderr
                if proc.returncode not in (0, 3) or "MemoryError" in log:
                    first = [ln for ln in log.splitlines() if "MemoryError" in ln][:1] or log.strip().splitlines()[-2:]
                    return False, f"exit {proc.returncode}: " + " | ".join(first)
                if "confirmed" in log and not (image / "ota.json").exists():
                    break
        except subprocess.TimeoutExpired:
            return False, f"a boot took over {UPDATE_BOOT_TIMEOUT_S:g} s"
        finally:
            coordinator.stop()
        if "running 0.3.0 confirmed" not in log:
            waits = "; it waited for memory" if "update waits" in log else ""
            return False, "not confirmed after %d boots%s" % (UPDATE_TRIAL_BOOTS, waits)
        store = ReadingStore(open_database(db))
        seqs = [r["seq"] for r in store.readings(reading.device_id(meter_pub))]
        store.db.close()
        if seqs != list(range(1, len(seqs) + 1)):
            return False, "readings lost or repeated: %s" % seqs
        return True, f"{len(seqs)} readings"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def update_peak(root: Path, frozen_binary: str, pzem_console: bool) -> tuple[int, dict[int, str]]:
    """Smallest heap (to 1 KB) in which the frozen firmware takes a
    full-size update (1.5 MB, 384 chunks) to the end: UPDATE_REPEATS trials
    at each bisection step, UPDATE_CONFIRM more at the heap found. With it,
    how the last failed trial at each heap tried ended."""
    failed: dict[int, str] = {}

    def runs(heap: int, trials: int) -> bool:
        for _ in range(trials):
            ok, detail = update_trial(root, frozen_binary, heap, pzem_console)
            if not ok:
                failed[heap] = detail
                return False
        return True

    top = 64 * 1024
    ok, detail = update_trial(root, frozen_binary, top, pzem_console)
    if not ok:
        raise RuntimeError(f"a full update did not complete in a {top // 1024} KB heap: {detail}")
    peak = bisect_heap(lambda heap: runs(heap, UPDATE_REPEATS), lo=40 * 1024, hi=top)
    for _ in range(LOOP_MAX_STEPS):
        if runs(peak, UPDATE_CONFIRM):
            return peak, failed
        peak += 1024
    raise RuntimeError(f"no heap up to {peak // 1024} KB took the update {UPDATE_CONFIRM} times in a row")


def failures_text(failed: dict[int, str], peak: int) -> str:
    below = sorted((h for h in failed if h >= peak - 2048), reverse=True)
    return "; ".join(f"{h / 1024:.1f} KB: {failed[h]}" for h in below) or "none"


def update_lines(frozen_binary: str, metering_peak: int | None) -> list[str]:
    """Peak heap of a full-size update (1.5 MB from a coordinator over CoAP
    Block2 while readings go on, checked at boot, switched, confirmed) in
    the frozen esp32-like build: with the simulated meter, and with the
    PZEM driver and the console; against `metering_peak` (the firmware with
    PZEM and console without an update, measured in this run) if given."""
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        root = Path(tmp)
        plain, plain_failed = update_peak(root, frozen_binary, False)
        full, full_failed = update_peak(root, frozen_binary, True)
    runs = UPDATE_REPEATS + UPDATE_CONFIRM
    lines = [
        f"    a full-size update (1.5 MB, 384 chunks over CoAP Block2 while readings go on, checked at boot, "
        f"switched, confirmed), frozen, in each of {runs} updates:",
        f"      simulated meter, no console: peak heap {plain / 1024:.0f} KB "
        f"(target <= 48 KB: {'met' if plain <= 48 * 1024 else 'NOT met'}); just below it: "
        f"{failures_text(plain_failed, plain)}",
        f"      PZEM driver and console (status and update at every boot): peak heap {full / 1024:.0f} KB "
        f"(target <= 48 KB: {'met' if full <= 48 * 1024 else 'NOT met'}); ratio to the simulated meter "
        f"{full / plain:.2f}; just below it: {failures_text(full_failed, full)}",
    ]
    if metering_peak:
        lines.append(f"      the same firmware metering without an update: {metering_peak / 1024:.0f} KB; the update "
                     f"costs {(full - metering_peak) / 1024:+.0f} KB, ratio {full / metering_peak:.2f}")
    return lines


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
    ap.add_argument("--loop-readings", type=int, default=30,
                    help="readings the flashed firmware sends per trial for the whole-loop peak heap (default 30)")
    ap.add_argument("--esp32like-only", action="store_true",
                    help="measure only the peak heap in the esp32-like build (frozen in clear and with OSCORE, "
                         "against .mpy files)")
    ap.add_argument("--no-mpy-baseline", action="store_true",
                    help="with --esp32like-only: skip the .mpy baseline (frozen in clear is the baseline of the "
                         "OSCORE figure)")
    ap.add_argument("--update-only", action="store_true",
                    help="measure only the peak heap of a full-size firmware update in the esp32-like build "
                         "(frozen, PZEM driver and console)")
    args = ap.parse_args()
    n = args.count
    if args.update_only:
        print("firmware benchmark: peak heap of a full-size update as an ESP32 runs it")
        print("\n".join(update_lines(str(frozen.esp32like_binary()), None)))
        return 0
    if args.esp32like_only:
        print("firmware benchmark: peak heap as an ESP32 runs it")
        print("\n".join(esp32like_lines(args.loop_readings, not args.no_mpy_baseline)))
        return 0

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
    loop_peak, loop_runs, loop_band = whole_loop_peak(args.loop_readings)
    esp32like = esp32like_lines(args.loop_readings)

    print(f"firmware benchmark: {n} readings built and signed")
    print(f"  baseline: bitcoinx (libsecp256k1, C) in CPython   {baseline_us:9.1f} us/reading")
    print(f"  shared/ signer in CPython                         {cpython_us:9.1f} us/reading   ratio {cpython_us / baseline_us:7.1f}x")
    print(f"  MicroPython unix port, generator table            {with_table['us_per_reading']:9.1f} us/reading   ratio {with_table['us_per_reading'] / baseline_us:7.1f}x"
          f"   table resident {with_table['resident_bytes'] / 1024:.0f} KB, peak heap {with_table['peak_bytes'] / 1024:.0f} KB")
    print(f"  MicroPython unix port, no table (bare ESP32 mode) {without['us_per_reading']:9.1f} us/reading   ratio {without['us_per_reading'] / baseline_us:7.1f}x"
          f"   resident {without['resident_bytes'] / 1024:.0f} KB, peak heap {without['peak_bytes'] / 1024:.0f} KB")
    print(f"  peak heap as flashed (.mpy modules, no table): {flashed_peak / 1024:.0f} KB (from .py sources "
          f"{without['peak_bytes'] / 1024:.0f} KB, ratio {without['peak_bytes'] / flashed_peak:.2f})")
    print(f"  peak heap of the whole firmware as flashed: {loop_peak / 1024:.0f} KB (main loop: {args.loop_readings} readings read, "
          f"signed, sent over CoAP and acknowledged by a coordinator on 127.0.0.1, in each of {loop_runs} runs; "
          f"read-sign path as flashed {flashed_peak / 1024:.0f} KB, ratio {loop_peak / flashed_peak:.2f})")
    print("    below it the loop runs only sometimes (fragmentation follows the timing): "
          + ", ".join(f"{heap / 1024:.0f} KB {ran}/{LOOP_BAND_TRIALS}" for heap, ran in loop_band))
    print("\n".join(esp32like))
    print(f"  ... batches of 3 (batch_size = 3), no table      {without['us_per_reading_batched']:9.1f} us/reading   ratio {without['us_per_reading_batched'] / baseline_us:7.1f}x"
          f"   ({without['us_per_reading'] / without['us_per_reading_batched']:.1f}x faster than one signature per reading)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
