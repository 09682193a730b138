"""The firmware frozen into a MicroPython binary, built and cached.

On a board the firmware is frozen into the MicroPython image (bytecode in
flash, not in RAM): built with the ESP-IDF toolchain and written with
`microgrid flash --firmware FILE`,

    make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=$PWD/edge/manifest.py

which this machine cannot run. What it can run is the esp32-like unix
build (../shared/micropython-esp32like: 32-bit, float32, 30-bit ticks),
whose build.sh freezes the same manifest the same way (about 30-60 s).
`esp32like_binary()` builds it once per firmware source and keeps it in
the cache, keyed by a hash of everything that goes into it: edge/,
shared/, main.py, the manifest and the build script. `microgrid flash
--target dir:PATH --frozen`, the heap benchmark and the tests boot it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import FlashError
from .image import PACKAGES, firmware_files

STEP = "build image"
CACHE_ENV = "MICROGRID_CACHE"
BUILD_ENV = "MICROGRID_ESP32LIKE_BUILD"
BUILD_TIMEOUT_S = 900.0
MANIFEST = PACKAGES["edge"] / "manifest.py"
BUILD_REL = Path("shared") / "micropython-esp32like" / "build.sh"
# The command a board's image is built with (documented; needs ESP-IDF).
ESP32_BUILD = "make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST={manifest}"


def cache_dir() -> Path:
    """$MICROGRID_CACHE, else $XDG_CACHE_HOME/microgrid, else ~/.cache/microgrid."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "microgrid"


def build_script() -> Path:
    """../shared/micropython-esp32like/build.sh beside the repository (or
    $MICROGRID_ESP32LIKE_BUILD), used where it lies."""
    given = os.environ.get(BUILD_ENV)
    path = Path(given) if given else PACKAGES["edge"].resolve().parent.parent / BUILD_REL
    if not path.is_file():
        raise FlashError(STEP, f"the esp32-like MicroPython build script was not found at {path}",
                         f"lay ../shared beside the repository, or set {BUILD_ENV} to its build.sh")
    return path


def sources_digest(script: Path | None = None) -> str:
    """sha256 of the firmware sources, the manifest and the build script
    (with its source archive's name and size): what the binary is built from."""
    h = hashlib.sha256()
    files = dict(firmware_files())
    files["edge/manifest.py"] = MANIFEST
    for rel in sorted(files):
        data = files[rel].read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode() + data)
    if script is not None:
        h.update(script.read_bytes())
        for archive in sorted(script.parent.glob("*.tar.*")):
            h.update(f"{archive.name}\0{archive.stat().st_size}\0".encode())
    return h.hexdigest()


def esp32like_binary(log: bool = True) -> Path:
    """The esp32-like MicroPython with the firmware frozen in, built on
    first use for these sources and then taken from the cache."""
    script = build_script()
    digest = sources_digest(script)
    root = cache_dir()
    out = root / f"esp32like-frozen-{digest[:16]}"
    binary = out / "micropython"
    if binary.is_file():
        return binary
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f"{out.name}.lock", "w")
    except OSError as e:
        raise FlashError(STEP, f"cannot use the build cache {root}: {e.strerror}",
                         f"set {CACHE_ENV} to a folder you can write to") from None
    with lock:
        # One build at a time per source (parallel test workers wait here
        # and then find the binary the first one built).
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():
            return binary
        if log:
            print(f"      building the esp32-like MicroPython with the firmware frozen in "
                  f"({script} {MANIFEST}), about a minute, cached in {out}", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=root))
        try:
            proc = subprocess.run(["bash", str(script), str(tmp), str(MANIFEST)], capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT_S)
            if proc.returncode != 0 or not (tmp / "micropython").is_file():
                tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-4:])
                raise FlashError(STEP, f"building the frozen esp32-like MicroPython failed: {tail}",
                                 f"run `{script} OUT {MANIFEST}` by hand to see the whole output "
                                 "(it needs gcc-multilib and make)")
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        except subprocess.TimeoutExpired:
            raise FlashError(STEP, f"building the frozen esp32-like MicroPython took over {BUILD_TIMEOUT_S:g} s",
                             f"run `{script} OUT {MANIFEST}` by hand to see where it stops") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return binary
