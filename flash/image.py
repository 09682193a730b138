"""The board image: firmware files, config and key, laid out as MicroPython
expects them on a board's filesystem.

    main.py          entry point (from edge/main.py), run at boot
    edge/...         the firmware package
    shared/...       the cross-runtime package
    config.json      the meter's settings (see edge/config.py)
    device.key       the secp256k1 secret, hex (absent when the board made its own)

The same layout goes to a board (mpremote) or into a folder that the
`micropython` unix port boots (`micropython main.py` in that folder).
With the firmware frozen into the MicroPython binary (flash/frozen.py,
edge/manifest.py) only main.py, config.json and device.key are files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import microgrid.edge
import microgrid.shared

PACKAGES = {"edge": Path(microgrid.edge.__file__).parent, "shared": Path(microgrid.shared.__file__).parent}
# edge/manifest.py is build input for a frozen firmware image, not firmware.
MANIFEST_SOURCE = PACKAGES["edge"] / "manifest.py"
CONFIG_FILE = "config.json"
KEY_FILE = "device.key"


def firmware_files() -> dict[str, Path]:
    """Image path -> source file for every firmware source file."""
    files: dict[str, Path] = {}
    for package, root in PACKAGES.items():
        for src in sorted(root.rglob("*.py")):
            if "__pycache__" in src.parts or src == MANIFEST_SOURCE:
                continue
            files[f"{package}/{src.relative_to(root).as_posix()}"] = src
    files["main.py"] = PACKAGES["edge"] / "main.py"
    return files


def write_image(target: str | Path, config: dict[str, Any], secret: bytes | None = None) -> Path:
    """Write a bootable image into the folder `target` (created if needed).
    An existing image's state file (counters, sequence) is left alone."""
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    for rel, src in firmware_files().items():
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if secret is not None:
        if len(secret) != 32:
            raise ValueError(f"secret must be 32 bytes, got {len(secret)}")
        key_path = out / KEY_FILE
        key_path.write_text(secret.hex() + "\n")
        key_path.chmod(0o600)
    return out
