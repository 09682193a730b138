"""The firmware frozen into MicroPython is what runs: `microgrid flash`
leaves only main.py, config.json and the key on the filesystem, removes any
edge/ or shared/ copy that would shadow the frozen modules ('' comes before
.frozen in sys.path), and checks where `import edge` resolves.

The frozen binary is the esp32-like build (32-bit, as an ESP32) with
edge/manifest.py frozen in, built once per source (conftest.py). A board
is a folder behind the stand-in mpremote; its firmware image, written by
the stand-in esptool, is that binary."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from microgrid.flash import build
from microgrid.flash.errors import FlashError
from microgrid.flash.flow import Flasher, FlashRequest
from microgrid.flash.transfer import Inventory, SerialTarget
from microgrid.flash.unix_port import boot

from ..conftest import free_udp_port, meter_summary
from ..e2e.test_meter_to_coordinator import assert_all_verify, stored_rows
from ..edge.mp import fixture
from .fakes import board_env, fake_esptool, fake_mpremote, tool_calls
from .helpers import coordinator_config, flash, meter_config, token_file

# The bar (issue 12): the firmware with the PZEM driver and the console,
# frozen, runs in a 48 KB heap (an ESP32 without PSRAM leaves the firmware
# about 100 KB). Measured by bench/bench_firmware.py: it runs every time
# in 47 KB with the scripted hardware layer the unix port needs, which
# takes ~1.8 KB more heap than edge/hal/board.py does on a board.
HEAP_BOUND = 48 * 1024
ONLY_DATA = ["config.json", "device.key", "main.py", "manifest.json"]
PZEM = {"type": "pzem004t", "uart": {"id": 2}}


def pzem_script(folder: Path) -> None:
    """The scripted UART answers every PZEM request with a recorded frame."""
    valid = fixture("pzem004t.json")["cases"][0]["replies"][0]
    (folder / "hal_script.json").write_text(json.dumps({"uart": {"2": {"replies": [valid], "repeat": True}}}))


def resolved(folder: Path, micropython: str) -> dict:
    """Where main.py's imports resolve in `folder`, run as boot() runs it."""
    code = ("import json, os, edge, shared, edge.firmware, shared.secp256k1\n"
            "def on_fs(p):\n"
            "    try:\n        os.stat(p)\n        return True\n    except OSError:\n        return False\n"
            "print(json.dumps({'edge': edge.__path__, 'shared': shared.__path__,"
            " 'firmware_file': edge.firmware.__file__, 'on_fs': on_fs(edge.firmware.__file__)}))")
    env = dict(os.environ, MICROPYPATH=".frozen:" + str(folder.resolve()))
    out = subprocess.run([micropython, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.timeout(600)  # the first test to ask builds the frozen binary (about a minute)
def test_frozen_folder_holds_only_main_config_key_and_runs_pzem_and_console_in_48_kb(
        tmp_path: Path, frozen_micropython: str, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    coord = coordinator_factory(db=db, config=coordinator_config(tmp_path))
    img = tmp_path / "img"
    cfg = meter_config(tmp_path, max_readings=20, console=True, meter=PZEM)
    common = ["--coordinator", f"127.0.0.1:{coord.port}", "--token-file", str(token_file(tmp_path)), "--json"]
    # An image flashed the old way first: edge/ and shared/ as files.
    first = flash("--target", f"dir:{img}", "--config", str(cfg), *common)
    assert first.code == 0, first.out + first.err
    assert (img / "edge" / "firmware.mpy").is_file()
    run = flash("--target", f"dir:{img}", "--frozen", *common)
    assert run.code == 0, run.out + run.err
    # Nothing left to shadow the frozen modules: not a file, not a folder.
    assert sorted(p.name for p in img.iterdir()) == ONLY_DATA
    assert run.result["key_made"] == "kept" and run.result["registered"] == "known"
    manifest = json.loads((img / "manifest.json").read_text())
    assert manifest["files"].keys() == {"main.py"} and manifest["frozen"] == build.firmware_version()
    assert manifest["interpreter"] == frozen_micropython
    assert "run frozen from the MicroPython binary, nothing shadows them" in run.out
    where = resolved(img, frozen_micropython)
    assert where["edge"] == ".frozen/edge" and where["shared"] == ".frozen/shared", where
    assert not where["on_fs"], where
    # Booted as a board would be, in a 48 KB heap: 20 PZEM readings read,
    # signed and delivered while the console answers commands.
    pzem_script(img)
    proc = boot(img, heapsize=HEAP_BOUND, stdin=subprocess.PIPE)
    out, _ = proc.communicate("status\nselftest\n", timeout=120)
    assert proc.returncode == 0 and "MemoryError" not in out, out[-3000:]
    summary = meter_summary(out)
    assert summary["produced"] == summary["delivered"] == 20 and summary["errors"]["meter"] == 0, out[-3000:]
    # The console answered; selftest signed and verified in that heap (its
    # memory check wants 16 KB free, more than a 48 KB heap leaves).
    assert f"firmware {build.firmware_version()}" in out and "PASS signature" in out and "PASS meter" in out
    rows = stored_rows(db, bytes.fromhex(run.result["public_key"]))
    assert [r["seq"] for r in rows] == list(range(1, 21)) and {r["import_wh"] for r in rows} == {123456}
    assert_all_verify(rows, bytes.fromhex(run.result["public_key"]))


@pytest.mark.timeout(600)
def test_frozen_firmware_runs_in_48_kb_through_an_outage_a_full_outbox_and_a_segment_rollover(
        tmp_path: Path, frozen_micropython: str, coordinator_factory) -> None:
    # The rest of the firmware's paths in the same 48 KB heap: readings
    # queued while the coordinator cannot be reached, the full outbox
    # merging its oldest (a re-signed reading at send time), the backlog
    # delivered after a reboot, the outbox's append-only segments rolling
    # over (the first deleted once delivered), and console commands.
    db = tmp_path / "c.db"
    coord = coordinator_factory(db=db, config=coordinator_config(tmp_path))
    img = tmp_path / "img"
    cfg = meter_config(tmp_path, console=True, meter=PZEM, outbox_size=6, max_retransmit=0, drain_timeout_s=1)
    run = flash("--target", f"dir:{img}", "--config", str(cfg), "--frozen", "--coordinator", f"127.0.0.1:{coord.port}",
                "--token-file", str(token_file(tmp_path)), "--json")
    assert run.code == 0, run.out + run.err
    pzem_script(img)
    config = json.loads((img / "config.json").read_text())
    # Away: nothing answers on that port.
    (img / "config.json").write_text(json.dumps(dict(config, coordinator_port=free_udp_port(), max_readings=12)))
    out, _ = boot(img, heapsize=HEAP_BOUND, stdin=subprocess.PIPE).communicate("status\nlog\n", timeout=120)
    assert "MemoryError" not in out and "Traceback" not in out, out[-3000:]
    away = meter_summary(out)
    assert away["produced"] == 12 and away["delivered"] == 0 and away["pending"] == 6 and away["dropped"] >= 6, away
    assert "outbox full: merged reading seq" in out and "free memory" in out
    # Back: the backlog (its oldest standing for the merged readings) and
    # 30 new readings; ordinals 0..41 span two 32-slot segments.
    (img / "config.json").write_text(json.dumps(dict(config, max_readings=30)))
    out, _ = boot(img, heapsize=HEAP_BOUND, stdin=subprocess.PIPE).communicate("selftest\nstatus\n", timeout=120)
    assert "MemoryError" not in out and "Traceback" not in out, out[-3000:]
    back = meter_summary(out)
    # The first new reading found the outbox still full: one more merge.
    assert back["delivered"] + back["dropped"] == 6 + 30 and back["pending"] == 0 and back["rejected"] == 0, back
    assert back["last_seq"] == 42, back
    assert "PASS signature" in out and "PASS meter" in out
    rows = stored_rows(db, bytes.fromhex(run.result["public_key"]))
    seqs = [r["seq"] for r in rows]
    # Every delivered number once, in order; the merged ones stand inside
    # the first delivered reading's merged_from.
    assert seqs == list(range(43 - back["delivered"], 43)), seqs
    assert_all_verify(rows, bytes.fromhex(run.result["public_key"]))
    assert sorted(os.listdir(img / "outbox.d")) == ["1"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("shadow", ["edge/firmware.mpy", "shared/", "edge.py"])
def test_anything_shadowing_the_frozen_firmware_fails_the_check_and_a_flash_removes_it(
        tmp_path: Path, frozen_micropython: str, shadow: str) -> None:
    img = tmp_path / "img"
    assert flash("--target", f"dir:{img}", "--frozen", "--no-register").code == 0
    path = img / shadow
    if shadow.endswith("/"):
        path.mkdir()  # even an empty folder is a package that hides the frozen one
    else:
        path.parent.mkdir(exist_ok=True)
        shutil.copyfile(img / "main.py", path)
    check = flash("--check", "--target", f"dir:{img}", "--no-register")
    assert check.code == 1 and "shadows the frozen firmware" in check.out, check.out
    again = flash("--target", f"dir:{img}", "--frozen", "--no-register")
    assert again.code == 0, again.out + again.err
    assert sorted(p.name for p in img.iterdir()) == ONLY_DATA
    assert flash("--check", "--target", f"dir:{img}", "--no-register").code == 0


@pytest.mark.timeout(600)
def test_board_gets_the_frozen_firmware_image_then_only_main_and_config(
        tmp_path: Path, frozen_micropython: str, coordinator_factory) -> None:
    port = tmp_path / "ttyUSB0"
    port.touch()
    root = tmp_path / "board"
    board_fw = tmp_path / "board-firmware"
    env = board_env(tmp_path, root, FAKE_BOARD_FIRMWARE=str(board_fw))
    tools = ["--mpremote", str(fake_mpremote(tmp_path)), "--esptool", str(fake_esptool(tmp_path))]
    # First a stock MicroPython with the firmware as .mpy files.
    old = flash("--target", f"serial:{port}", "--no-frozen", *tools, "--no-register", env=env)
    assert old.code == 0, old.out + old.err
    assert (root / "shared" / "secp256k1.mpy").is_file()
    # Then the firmware image with edge/manifest.py frozen in.
    image = tmp_path / "microgrid-esp32.bin"
    shutil.copyfile(frozen_micropython, image)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    db = tmp_path / "c.db"
    coord = coordinator_factory(db=db, config=coordinator_config(tmp_path))
    before = len(tool_calls(tmp_path / "tools.log"))
    run = flash("--target", f"serial:{port}", "--board", "esp32-devkitc", "--firmware", str(image), "--firmware-sha256", digest, *tools,
                "--config", str(meter_config(tmp_path, max_readings=5)), "--coordinator", f"127.0.0.1:{coord.port}",
                "--token-file", str(token_file(tmp_path)), "--json", env=env)
    assert run.code == 0, run.out + run.err
    assert "frozen in the board's MicroPython image" in run.out and run.result["key_made"] == "kept"
    assert sorted(p.name for p in root.iterdir()) == ONLY_DATA
    calls = tool_calls(tmp_path / "tools.log")[before:]
    assert calls[0][:2] == ["esptool", "--chip"] and calls[0][-1] == str(image)
    copied = [a for c in calls if c[0] == "mpremote" and "cp" in c for a in c if a.startswith(":")]
    assert copied == [":config.json", ":manifest.json"]  # main.py is the same as before
    assert flash("--check", "--target", f"serial:{port}", *tools, "--token-file", str(token_file(tmp_path)), env=env).code == 0
    out, _ = boot(root, micropython=str(board_fw), heapsize=HEAP_BOUND).communicate(timeout=120)
    assert meter_summary(out)["delivered"] == 5, out[-3000:]
    assert len(stored_rows(db, bytes.fromhex(run.result["public_key"]))) == 5


def test_stock_micropython_on_a_board_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    port = tmp_path / "ttyUSB0"
    port.touch()
    root = tmp_path / "board"
    env = board_env(tmp_path, root)
    run = flash("--target", f"serial:{port}", "--mpremote", str(fake_mpremote(tmp_path)), "--no-register", env=env)
    assert run.code == 1 and "error in step 'build image'" in run.err
    assert "no microgrid firmware frozen in it" in run.err and "--firmware FILE" in run.err and "--no-frozen" in run.err
    assert "FROZEN_MANIFEST=" in run.err and list(root.iterdir()) == []


def test_a_board_frozen_with_another_firmware_version_is_refused(tmp_path: Path) -> None:
    target = SerialTarget(str(tmp_path / "ttyUSB0"))
    flasher = Flasher(FlashRequest(target=target, register=False))
    inv = Inventory("ESP32", "esp32", 0, firmware={"edge": ".frozen/edge", "shared": ".frozen/shared", "frozen": "0.0.1"})
    with pytest.raises(FlashError) as e:
        flasher._frozen_binary("build image", inv)
    assert "version 0.0.1" in e.value.cause and build.firmware_version() in e.value.cause and "--firmware" in e.value.fix
    inv.firmware["frozen"] = build.firmware_version()
    assert flasher._frozen_binary("build image", inv) is None


def test_frozen_build_runs_once_per_source_and_a_failed_build_names_the_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from microgrid.flash import frozen

    script = tmp_path / "micropython-esp32like" / "build.sh"
    script.parent.mkdir()
    count = tmp_path / "builds"
    # A stand-in for build.sh: OUT/micropython from the manifest given.
    script.write_text(f'#!/bin/sh\necho x >> {count}\n[ -f "$2" ] || exit 2\n'
                      'mkdir -p "$1" && printf "#!/bin/sh\\n" > "$1/micropython" && chmod +x "$1/micropython"\n')
    monkeypatch.setenv(frozen.BUILD_ENV, str(script))
    monkeypatch.setenv(frozen.CACHE_ENV, str(tmp_path / "cache"))
    first = frozen.esp32like_binary(log=False)
    assert first.is_file() and first.parent.parent == tmp_path / "cache"
    assert frozen.esp32like_binary(log=False) == first and count.read_text().count("x") == 1
    # Another build script (or firmware source) is another binary.
    script.write_text(script.read_text().replace("exit 2", "exit 3") + "echo broken >&2\nexit 1\n")
    with pytest.raises(FlashError) as e:
        frozen.esp32like_binary(log=False)
    assert "broken" in e.value.cause and str(frozen.MANIFEST) in e.value.fix
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == [first.parent.name]
    monkeypatch.setenv(frozen.BUILD_ENV, str(tmp_path / "nowhere" / "build.sh"))
    with pytest.raises(FlashError) as e:
        frozen.esp32like_binary(log=False)
    assert "not found" in e.value.cause and frozen.BUILD_ENV in e.value.fix
