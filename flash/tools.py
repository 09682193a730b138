"""esptool and mpremote as subprocess steps.

The command lines are built by small functions (tested as such), run
with a time limit, and their failures are read for the cases an
installer meets: the port does not exist or is busy, the board does not
answer, the chip is not the one named, permission to the port is
missing. Each becomes a FlashError naming the step, the cause and the fix.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import FlashError
from .targets import BoardProfile

ESPTOOL_BAUD = 460800
MPREMOTE_TIMEOUT_S = 60.0


def find_tool(name: str, step: str, override: str | None = None) -> str:
    """The executable `name`: `override` if given, else beside this
    Python (a venv's bin/), else on PATH."""
    if override:
        if Path(override).is_file() and os.access(override, os.X_OK):
            return override
        raise FlashError(step, f"{name} at {override} is not an executable file", f"give the path of {name} or leave it out")
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise FlashError(step, f"{name} is not installed (not beside {sys.executable} nor on PATH)", f"pip install {name}")


def serial_ports() -> list[str]:
    try:
        from serial.tools import list_ports
    except ImportError:  # pragma: no cover - pyserial is a dependency
        return []
    return sorted(p.device for p in list_ports.comports())


def check_port(port: str, step: str) -> None:
    if Path(port).exists() or not port.startswith("/"):
        return
    present = serial_ports()
    shown = ", ".join(present) if present else "none"
    raise FlashError(step, f"serial port {port} does not exist (ports present: {shown})",
                     "plug the board in with a data USB cable (not a charge-only one) and pass its port, "
                     "e.g. --target /dev/ttyUSB0 (Linux) or /dev/cu.usbserial-* (macOS)")


# -- firmware checksum ------------------------------------------------------


def expected_sha256(firmware: Path, given: str | None) -> str:
    """The checksum to verify against: --firmware-sha256, else a
    `FILE.sha256` beside the firmware (sha256sum's format)."""
    if given:
        value = given.strip().lower()
    else:
        sidecar = firmware.with_name(firmware.name + ".sha256")
        if not sidecar.exists():
            raise FlashError("verify firmware", f"no checksum to verify {firmware.name} against",
                             "pass --firmware-sha256 HEX (from the download page), or put the "
                             f"`sha256sum` output beside it as {sidecar.name}")
        value = sidecar.read_text().split()[0].lower() if sidecar.read_text().split() else ""
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise FlashError("verify firmware", f"checksum {value!r} is not a sha256 (64 hex digits)",
                         "copy the SHA-256 from the firmware's download page")
    return value


def verify_firmware(firmware: Path, profile: BoardProfile, given_sha256: str | None) -> str:
    step = "verify firmware"
    if not firmware.is_file():
        raise FlashError(step, f"firmware file {firmware} does not exist", f"download it from {profile.download}")
    if profile.firmware_suffix and firmware.suffix != profile.firmware_suffix:
        raise FlashError(step, f"{firmware.name} is not a {profile.firmware_suffix} file, which {profile.name} takes",
                         f"download the {profile.firmware_suffix} for {profile.name} from {profile.download}")
    want = expected_sha256(firmware, given_sha256)
    have = hashlib.sha256(firmware.read_bytes()).hexdigest()
    if have != want:
        raise FlashError(step, f"{firmware.name} has sha256 {have}, expected {want}",
                         "download the firmware again (the file is damaged or not the one the checksum is for)")
    return have


# -- esptool ------------------------------------------------------------------


def esptool_erase_cmd(esptool: str, port: str, profile: BoardProfile) -> list[str]:
    return [esptool, "--chip", str(profile.esptool_chip), "--port", port, "erase-flash"]


def esptool_write_cmd(esptool: str, port: str, profile: BoardProfile, firmware: Path, baud: int = ESPTOOL_BAUD) -> list[str]:
    # write-flash verifies what it wrote by hash before returning (esptool
    # >= 4 does so by default); -z sends it compressed.
    return [esptool, "--chip", str(profile.esptool_chip), "--port", port, "--baud", str(baud),
            "write-flash", "-z", hex(profile.firmware_offset or 0), str(firmware)]


def _esptool_error(step: str, port: str, profile: BoardProfile, output: str) -> FlashError:
    low = output.lower()
    if "wrong --chip" in low or "this chip is" in low or "wrong chip" in low:
        line = next((ln.strip() for ln in output.splitlines() if "chip is" in ln.lower()), "")
        return FlashError(step, f"the board on {port} is not an {str(profile.esptool_chip).upper()} ({line or 'esptool: wrong chip'})",
                          f"use --board for the board you have (supported: esp32-devkitc, esp32-c3, pico-w), or plug in a {profile.name}")
    if "permission denied" in low:
        return FlashError(step, f"no permission to open {port}",
                          "add yourself to the serial group (sudo usermod -aG dialout $USER), log out and in again")
    if "could not open" in low or "port is busy" in low or "no such file" in low:
        return FlashError(step, f"cannot open {port}: busy or gone",
                          "close other programs using the port (serial monitors, mpremote, Thonny) and check the cable")
    if "failed to connect" in low or "no serial data received" in low or "timed out waiting for packet" in low:
        return FlashError(step, f"the board on {port} does not answer esptool (not in its bootloader)",
                          "hold the BOOT button, press and release EN/RESET, release BOOT, then run again; "
                          "check the cable carries data")
    tail = " | ".join(output.strip().splitlines()[-3:])
    return FlashError(step, f"esptool failed: {tail}", "run the esptool command shown above by hand to see its full output")


def run_esptool(cmd: list[str], step: str, port: str, profile: BoardProfile, timeout: float = 300.0) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FlashError(step, f"esptool did not finish within {timeout:g} s on {port}",
                         "press EN/RESET on the board and run again; try a lower speed") from None
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise _esptool_error(step, port, profile, output)
    return output


# -- mpremote -------------------------------------------------------------------


def mpremote_cmd(mpremote: str, port: str, *args: str) -> list[str]:
    return [mpremote, "connect", port, *args]


def mpremote_copy_cmd(mpremote: str, port: str, paths: list[str]) -> list[str]:
    """Copy image paths (relative to the staging folder, the cwd) to the
    board's root; folders recursively."""
    return mpremote_cmd(mpremote, port, "fs", "cp", "-r", *paths, ":")


def mpremote_run_cmd(mpremote: str, port: str, script: Path) -> list[str]:
    return mpremote_cmd(mpremote, port, "run", str(script))


def mpremote_exec_cmd(mpremote: str, port: str, code: str) -> list[str]:
    return mpremote_cmd(mpremote, port, "exec", code)


def _mpremote_error(step: str, port: str, output: str) -> FlashError:
    low = output.lower()
    if "permission denied" in low:
        return FlashError(step, f"no permission to open {port}",
                          "add yourself to the serial group (sudo usermod -aG dialout $USER), log out and in again")
    if "failed to access" in low or "no device found" in low or "could not open port" in low:
        return FlashError(step, f"cannot open {port}: busy or gone",
                          "close other programs using the port (serial monitors, Thonny, another mpremote) and check the cable")
    if "could not enter raw repl" in low or "raw repl" in low:
        return FlashError(step, f"the board on {port} does not give MicroPython's raw REPL",
                          "press RESET; if the board is blank, write MicroPython first with --firmware FILE")
    if "traceback" in low or "error" in low:
        tail = " | ".join(output.strip().splitlines()[-3:])
        return FlashError(step, f"the board reported an error: {tail}",
                          "check the board has free space (microgrid flash --check shows the files) and run again")
    tail = " | ".join(output.strip().splitlines()[-3:])
    return FlashError(step, f"mpremote failed: {tail}", "run the mpremote command shown above by hand to see its full output")


def run_mpremote(cmd: list[str], step: str, port: str, cwd: Path | None = None,
                 timeout: float = MPREMOTE_TIMEOUT_S) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(cwd) if cwd else None)
    except subprocess.TimeoutExpired:
        raise FlashError(step, f"the board on {port} did not answer within {timeout:g} s",
                         "press RESET on the board; check it runs MicroPython (write it with --firmware FILE) "
                         "and that no program holds the port") from None
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise _mpremote_error(step, port, output)
    return proc.stdout
