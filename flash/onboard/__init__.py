# MicroPython scripts that run ON the board (sent with `mpremote run`) or
# in an image folder under the unix port (`micropython SCRIPT` there).
# They are data for CPython: read with `script(name)`, never imported.

from pathlib import Path


def script(name: str) -> Path:
    return Path(__file__).parent / (name + ".py")
