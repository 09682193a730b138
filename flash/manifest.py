"""The image manifest: sha256 of every file the image put on the board.

`manifest.json` sits at the image root. `microgrid flash --check` hashes
the files on the board (or in the folder) and compares; a missing file, a
changed one, or a stray firmware file (an old `.py` would shadow the new
`.mpy` of the same module) is reported by path.

The manifest lists the firmware and main.py (main.py alone when the
firmware is frozen into the MicroPython binary: `frozen` names its version); config.json is hashed as
`config_sha256` (the console may change it on purpose), and the board's
own files (device.key, state, outbox) are not listed: they are the
board's, never overwritten by a flash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
FORMAT = 1
FIRMWARE_DIRS = ("edge", "shared", "lib")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Manifest:
    board: str
    firmware_version: str
    mpy: str | None  # "6.3" when compiled, None for .py sources
    files: dict[str, str] = field(default_factory=dict)  # image path -> sha256
    config_sha256: str = ""
    packages: list[str] = field(default_factory=list)  # micropython-lib packages
    # The firmware version frozen into the MicroPython binary the image
    # runs on (then `files` is main.py alone); None: edge/ and shared/ are files.
    frozen: str | None = None
    # dir: targets only: the MicroPython binary that boots the folder (the
    # esp32-like build with the firmware frozen in), None: the unix port.
    interpreter: str | None = None

    def to_json(self) -> str:
        doc = {
            "format": FORMAT,
            "board": self.board,
            "firmware_version": self.firmware_version,
            "mpy": self.mpy,
            "packages": self.packages,
            "config_sha256": self.config_sha256,
            "files": dict(sorted(self.files.items())),
        }
        if self.frozen is not None:
            doc["frozen"] = self.frozen
        if self.interpreter is not None:
            doc["interpreter"] = self.interpreter
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        doc: Any = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("files"), dict):
            raise ValueError(f"not a format-{FORMAT} image manifest")
        return cls(
            board=str(doc["board"]),
            firmware_version=str(doc.get("firmware_version", "")),
            mpy=doc.get("mpy"),
            files={str(k): str(v) for k, v in doc["files"].items()},
            config_sha256=str(doc.get("config_sha256", "")),
            packages=list(doc.get("packages", [])),
            frozen=doc.get("frozen"),
            interpreter=doc.get("interpreter"),
        )


def is_firmware_path(path: str) -> bool:
    """A path the image owns: main.py and anything under the firmware
    folders, and a top-level module of a firmware package's name (it would
    hide the package). Stray files there are the image's to remove."""
    if "/" not in path:
        return path == "main.py" or path.rsplit(".", 1)[0] in FIRMWARE_DIRS and path.endswith((".py", ".mpy"))
    return path.split("/", 1)[0] in FIRMWARE_DIRS


@dataclass
class Comparison:
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.stray)

    def describe(self) -> str:
        parts = []
        for label, paths in (("missing", self.missing), ("changed", self.changed), ("stray", self.stray)):
            if paths:
                shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
                parts.append(f"{len(paths)} {label} ({shown})")
        return "; ".join(parts) or "all files match"


def compare(manifest: Manifest, found: dict[str, str]) -> Comparison:
    """`found`: path -> sha256 of the files on the board."""
    result = Comparison()
    for path, digest in sorted(manifest.files.items()):
        if path not in found:
            result.missing.append(path)
        elif found[path] != digest:
            result.changed.append(path)
    for path in sorted(found):
        if is_firmware_path(path) and path not in manifest.files:
            result.stray.append(path)
    return result
