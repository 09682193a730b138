"""What the installer sees when something is wrong: the step, the cause
(with the value) and the fix, and nothing half-done that the next run
cannot finish. `--check` finds each kind of damage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.flash import build
from microgrid.flash.errors import FlashError
from microgrid.flash.manifest import Manifest, compare

from ..conftest import free_udp_port
from .fakes import board_env, fake_mpremote, tool_calls
from .helpers import coordinator_config, flash, meter_config, token_file


def assert_error(run, step: str, *words: str) -> None:
    assert run.code == 1, run.out + run.err
    assert f"error in step '{step}'" in run.err, run.err
    assert "\n  fix: " in run.err
    for w in words:
        assert w in run.err, (w, run.err)


def devices(db: Path) -> list:
    store = ReadingStore(open_database(db))
    try:
        return store.devices()
    finally:
        store.db.close()


def test_bad_token_is_refused_nothing_is_registered_and_a_rerun_with_the_right_one_finishes(tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    coord = coordinator_factory(db=db, config=coordinator_config(tmp_path))
    image = tmp_path / "m"
    common = ["--target", f"dir:{image}", "--coordinator", f"127.0.0.1:{coord.port}", "--json"]
    run = flash(*common, "--token-file", str(token_file(tmp_path, "wrong-token")))
    assert_error(run, "register", "refused the installer token", "installer_token")
    assert devices(db) == []
    key = (image / "device.key").read_text()
    check = flash("--check", "--target", f"dir:{image}", "--token-file", str(token_file(tmp_path)))
    assert check.code == 1 and "not registered" in check.out and "register-device --pubkey" in check.out
    good = flash(*common, "--token-file", str(token_file(tmp_path)))
    assert good.code == 0 and good.result["registered"] == "new" and good.result["files_written"] == 0
    assert (image / "device.key").read_text() == key and len(devices(db)) == 1


def test_token_from_the_environment(tmp_path: Path, coordinator_factory) -> None:
    import os

    coord = coordinator_factory(db=tmp_path / "c.db", config=coordinator_config(tmp_path))
    env = dict(os.environ, MICROGRID_INSTALLER_TOKEN=token_file(tmp_path).read_text().strip())
    run = flash("--target", f"dir:{tmp_path / 'm'}", "--coordinator", f"127.0.0.1:{coord.port}", env=env)
    assert run.code == 0, run.err


def test_missing_token_stops_before_anything_is_written(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "MICROGRID_INSTALLER_TOKEN"}
    run = flash("--target", f"dir:{tmp_path / 'm'}", env=env)
    assert_error(run, "register", "no installer token", "--token-file", "--no-register")
    assert not (tmp_path / "m").exists()


def test_coordinator_without_installer_token_says_how_to_register_by_hand(tmp_path: Path, coordinator_factory) -> None:
    coord = coordinator_factory(db=tmp_path / "c.db")
    run = flash("--target", f"dir:{tmp_path / 'm'}", "--coordinator", f"127.0.0.1:{coord.port}",
                "--token-file", str(token_file(tmp_path)))
    assert_error(run, "register", "does not accept registrations", "register-device --pubkey")


def test_unreachable_coordinator_names_the_address(tmp_path: Path) -> None:
    port = free_udp_port()
    run = flash("--target", f"dir:{tmp_path / 'm'}", "--coordinator", f"127.0.0.1:{port}", "--timeout", "1",
                "--token-file", str(token_file(tmp_path)))
    assert_error(run, "register", f"coap://127.0.0.1:{port}/devices is unreachable", "--coordinator HOST:PORT")


@pytest.mark.parametrize("args, words", [
    (["--set", "interval_s=0"], ("interval_s=0", "expected a number")),
    (["--set", "colour=blue"], ("'colour' is unknown", "device_name")),
    (["--set", "meter.type=laser"], ("meter.type='laser'", "sdm120")),
    (["--set", "nonsense"], ("not KEY=VALUE",)),
    (["--coordinator", "10.0.0.1:99999"], ("not 1..65535",)),
    (["--config", "/nonexistent/meter.json"], ("cannot read config file",)),
])
def test_invalid_config_stops_before_anything_is_written(tmp_path: Path, args: list[str], words: tuple[str, ...]) -> None:
    run = flash("--target", f"dir:{tmp_path / 'm'}", "--no-register", *args)
    assert_error(run, "check config", *words)
    assert not (tmp_path / "m" / "manifest.json").exists()


@pytest.mark.parametrize("meter, words", [
    ({"type": "ct", "v_pin": 6, "i_pin": 39}, ("GPIO6", "SPI flash")),
    ({"type": "sdm120", "uart": {"id": 2, "tx": 17, "rx": 16}, "de_pin": 17}, ("GPIO17 is already used by meter.uart.tx",)),
    ({"type": "s0", "pin": 40}, ("has no GPIO40",)),
])
def test_pin_the_board_lacks_or_used_twice_is_an_error_at_flash_time(tmp_path: Path, meter: dict, words: tuple[str, ...]) -> None:
    port = tmp_path / "ttyUSB0"
    port.touch()
    env = board_env(tmp_path, tmp_path / "board")
    run = flash("--target", f"serial:{port}", "--no-frozen", "--board", "esp32-devkitc", "--mpremote", str(fake_mpremote(tmp_path)),
                "--config", str(meter_config(tmp_path, meter=meter)), "--no-register", env=env)
    assert_error(run, "check config", "pins do not fit esp32-devkitc", *words)
    assert [c[3] for c in tool_calls(tmp_path / "tools.log")] == ["run"]  # looked, wrote nothing


def test_bad_pins_stop_a_firmware_flash_before_esptool_runs(tmp_path: Path) -> None:
    import hashlib

    from .fakes import fake_esptool

    port = tmp_path / "ttyUSB0"
    port.touch()
    fw = tmp_path / "ESP32_GENERIC.bin"
    fw.write_bytes(b"\xe9firmware")
    run = flash("--target", f"serial:{port}", "--no-frozen", "--board", "esp32-devkitc", "--firmware", str(fw),
                "--firmware-sha256", hashlib.sha256(fw.read_bytes()).hexdigest(), "--esptool", str(fake_esptool(tmp_path)),
                "--set", 'meter={"type": "ct", "v_pin": 6}', "--no-register", env=board_env(tmp_path, tmp_path / "board"))
    assert_error(run, "check config", "GPIO6")
    assert tool_calls(tmp_path / "tools.log") == []


def test_meter_type_flag_takes_the_documented_wiring_of_the_board(tmp_path: Path) -> None:
    port = tmp_path / "ttyUSB0"
    port.touch()
    root = tmp_path / "board"
    run = flash("--target", f"serial:{port}", "--no-frozen", "--board", "esp32-c3", "--mpremote", str(fake_mpremote(tmp_path)),
                "--meter", "sdm120", "--no-register", env=board_env(tmp_path, root, machine="ESP32C3 module with ESP32C3"))
    assert run.code == 0, run.err
    assert json.loads((root / "config.json").read_text())["meter"] == {"type": "sdm120", "uart": {"id": 1, "tx": 7, "rx": 6}, "de_pin": 10}


# -- --check finds the damage ---------------------------------------------------


@pytest.fixture
def flashed(tmp_path: Path) -> Path:
    image = tmp_path / "m"
    run = flash("--target", f"dir:{image}", "--no-register", "--config", str(meter_config(tmp_path)))
    assert run.code == 0, run.err
    return image


def check(image: Path) -> tuple[int, str]:
    run = flash("--check", "--no-register", "--target", f"dir:{image}")
    return run.code, run.out


def test_check_passes_on_a_fresh_image(flashed: Path) -> None:
    code, out = check(flashed)
    assert code == 0 and "check passed" in out and "match manifest.json" in out


@pytest.mark.parametrize("damage, step, words", [
    (lambda m: (m / "shared" / "cbor.mpy").write_bytes(b"M\x06junk"), "files", "1 changed (shared/cbor.mpy)"),
    (lambda m: (m / "edge" / "firmware.mpy").unlink(), "files", "1 missing (edge/firmware.mpy)"),
    (lambda m: (m / "edge" / "coap.py").write_text("x = 1\n"), "files", "1 stray (edge/coap.py)"),
    (lambda m: (m / "manifest.json").unlink(), "files", "no manifest.json"),
    (lambda m: (m / "device.key").unlink(), "key", "no device key"),
    (lambda m: (m / "device.key").write_text("00" * 32), "key", "device key unusable"),
    (lambda m: (m / "config.json").write_text('{"interval_s": -1}'), "config", "interval_s=-1"),
    (lambda m: (m / "config.json").write_text("[1"), "config", "not a JSON object"),
])
def test_check_finds_each_kind_of_damage_and_says_how_to_fix_it(flashed: Path, damage, step: str, words: str) -> None:
    damage(flashed)
    code, out = check(flashed)
    assert code == 1 and "check failed" in out
    assert words in out, out
    assert f"] {step} ...\n      FAIL: " in out and "fix: " in out
    # Flashing again repairs it (the key only when it was missing).
    again = ["--config", str(meter_config(flashed.parent))] if step == "config" else []
    run = flash("--target", f"dir:{flashed}", "--no-register", *again)
    if "unusable" in words:
        assert_error(run, "device key", "unusable", "out of range", "remove device.key")
    else:
        assert run.code == 0, run.err
        assert check(flashed)[0] == 0


def test_a_broken_config_on_the_target_is_not_silently_replaced(flashed: Path) -> None:
    (flashed / "config.json").write_text("{")
    run = flash("--target", f"dir:{flashed}", "--no-register")
    assert_error(run, "check config", "not a JSON object", "--config FILE")


def test_check_of_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    code, out = check(tmp_path / "nowhere")
    assert code == 1 and "does not exist" in out and "flash it first" in out


def test_check_asks_the_coordinator_and_reports_unreachable(flashed: Path) -> None:
    port = free_udp_port()
    run = flash("--check", "--target", f"dir:{flashed}", "--coordinator", f"127.0.0.1:{port}", "--timeout", "1")
    assert run.code == 1 and "] registered ...\n      FAIL: " in run.out and "unreachable" in run.out


# -- the build's own guards -------------------------------------------------------


def test_firmware_imports_only_builtins_and_an_unknown_import_stops_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build.check_imports()  # the firmware as it is: no micropython-lib package needed
    assert build.MIP_PACKAGES == {}
    rogue = tmp_path / "rogue.py"
    rogue.write_text("import requests\nfrom edge import log\n")
    monkeypatch.setattr(build, "firmware_files", lambda: {"edge/rogue.py": rogue})
    with pytest.raises(FlashError) as e:
        build.check_imports()
    assert "edge/rogue.py imports 'requests'" in e.value.cause and "MIP_PACKAGES" in e.value.fix


def test_manifest_round_trip_and_comparison() -> None:
    m = Manifest("esp32-devkitc", "0.2.0", "6.3", {"main.py": "a" * 64, "edge/x.mpy": "b" * 64}, "c" * 64)
    assert Manifest.from_json(m.to_json()) == m
    assert compare(m, {"main.py": "a" * 64, "edge/x.mpy": "b" * 64, "state": "d", "config.json": "e"}).ok
    diff = compare(m, {"main.py": "f" * 64, "lib/old.py": "0"})
    assert diff.changed == ["main.py"] and diff.missing == ["edge/x.mpy"] and diff.stray == ["lib/old.py"]
    with pytest.raises(ValueError):
        Manifest.from_json('{"format": 99, "files": {}}')
