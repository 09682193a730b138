"""The scripts `microgrid flash` runs on the board (flash/onboard/) work
within a small board's heap, print the public key and never the secret."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from microgrid.flash.onboard import script
from microgrid.flash.transfer import Inventory
from microgrid.shared import secp256k1

from .helpers import flash


def run(image: Path, name: str, micropython: str, heap: str = "100k") -> str:
    env = dict(os.environ, MICROPYPATH=".frozen:" + str(image))
    proc = subprocess.run([micropython, "-X", f"heapsize={heap}", str(script(name))], cwd=image, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_keygen_and_inventory_fit_a_100_kb_heap_and_keep_the_secret(tmp_path: Path, micropython: str) -> None:
    image = tmp_path / "m"
    assert flash("--target", f"dir:{image}", "--no-register", "--set", "key_file=\"id.key\"").code == 0
    (image / "id.key").unlink()
    out = run(image, "keygen", micropython)
    state, pub = out.split()[1:]
    secret = (image / "id.key").read_text().strip()
    assert state == "new" and secp256k1.public_key(bytes.fromhex(secret)).hex() == pub
    assert run(image, "keygen", micropython).split()[1:] == ["kept", pub]
    listing = run(image, "inventory", micropython)
    assert secret not in out + listing
    inv = Inventory.parse(listing, "connect", "test")
    assert inv.key == pub and inv.others["id.key"] == 65
    assert "main.py" in inv.files and "manifest.json" in inv.files and inv.manifest() is not None


def test_inventory_of_a_blank_board_reports_no_files_and_no_key(tmp_path: Path, micropython: str) -> None:
    inv = Inventory.parse(run(tmp_path, "inventory", micropython), "connect", "test")
    assert inv.files == {} and inv.key is None and inv.config_text is None and inv.manifest() is None
    assert inv.mpy & 0xFF == 6
