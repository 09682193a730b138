"""hardware/ as data the code reads: pin maps, meter wiring, the
coordinator Pi's assignments, and the checks that stop a wrong pin at
flash time."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgrid.hardware import boards
from microgrid.hardware.boards import PinError, PinUse, check_pins, validate_config, validate_pins

REPO = Path(__file__).resolve().parents[2]
METER_BOARDS = ["esp32-devkitc", "esp32-c3", "pico-w"]
DRIVERS = ["pzem004t", "sdm120", "sdm630", "s0", "ct"]


def test_every_supported_board_has_a_pin_map() -> None:
    assert set(boards.board_names()) >= {"esp32-devkitc", "esp32-c3", "pico-w", "raspberry-pi"}
    for name in boards.board_names():
        b = boards.board(name)
        assert b.gpios and b.uarts
        assert not (b.gpios & set(b.unusable)), name
        assert b.input_only <= b.gpios and set(b.adc) <= b.gpios | set(b.unusable)


def test_data_files_are_package_data_found_without_the_repository_path() -> None:
    from importlib import resources

    files = {p.name for p in resources.files("microgrid.hardware").iterdir()}
    assert {"boards.json", "meters.json", "coordinator_pi.json"} <= files
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"*.json"' in pyproject and '"*.md"' in pyproject


def test_unknown_board_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="esp8266.*expected one of esp32-devkitc"):
        boards.board("esp8266")
    assert "not in hardware/boards.json" in validate_config("esp8266", {"meter": {"type": "s0"}})[0]


def test_pin_the_board_does_not_have_is_an_error() -> None:
    with pytest.raises(PinError, match=r"led=GPIO40: esp32-devkitc has no GPIO40; expected one of GPIO0"):
        validate_pins("esp32-devkitc", {"led": (40, "out")})
    with pytest.raises(PinError, match=r"led=GP23: GP23 is drives the wireless chip's power"):
        validate_pins("pico-w", {"led": (23, "out")})


def test_flash_pins_are_refused_with_the_reason() -> None:
    with pytest.raises(PinError, match="GPIO6 is wired to the module's SPI flash"):
        validate_pins("esp32-devkitc", {"s0": (6, "in")})
    with pytest.raises(PinError, match="GPIO14 is wired to the module's SPI flash"):
        validate_pins("esp32-c3", {"s0": (14, "in")})


def test_input_only_pin_used_as_output_is_an_error() -> None:
    for pin in (34, 35, 36, 39):
        with pytest.raises(PinError, match=f"de_pin=GPIO{pin}: GPIO{pin} is input-only; expected an output-capable pin"):
            validate_pins("esp32-devkitc", {"de_pin": (pin, "out")})
    # ... and as a UART TX (UART2 may use any pin through the GPIO matrix).
    with pytest.raises(PinError, match="is input-only"):
        validate_pins("esp32-devkitc", {"tx": PinUse(35, "uart_tx", uart=2)})
    # As an input it is fine.
    assert validate_pins("esp32-devkitc", {"s0": PinUse(34, "in")}) == []


def test_pin_used_twice_names_both_functions() -> None:
    with pytest.raises(PinError) as e:
        validate_pins("esp32-devkitc", {"meter.uart.tx": PinUse(17, "uart_tx", uart=2), "meter.de_pin": (17, "out")})
    assert e.value.problems == ["meter.de_pin=GPIO17: GPIO17 is already used by meter.uart.tx; expected a pin no other function uses"]
    assert e.value.board == "esp32-devkitc"


def test_every_fault_is_reported_at_once() -> None:
    report = check_pins("esp32-devkitc", {"a": (40, "in"), "b": (34, "out"), "c": (4, "in"), "d": (4, "in")})
    assert len(report.problems) == 3


def test_adc_must_be_an_adc_pin_usable_with_wifi() -> None:
    with pytest.raises(PinError, match="GPIO25 is ADC2_CH8, which cannot be read while Wi-Fi is on; expected one of GPIO32"):
        validate_pins("esp32-devkitc", {"v": (25, "adc")})
    assert validate_pins("esp32-devkitc", {"v": (25, "adc")}, wifi=False) == []
    with pytest.raises(PinError, match="GP15 has no ADC; expected one of GP26, GP27, GP28"):
        validate_pins("pico-w", {"v": (15, "adc")})
    with pytest.raises(PinError, match="has no ADC; expected one of \\(none"):
        validate_pins("raspberry-pi", {"v": (17, "adc")})


def test_pull_up_on_a_pin_without_one_is_an_error() -> None:
    with pytest.raises(PinError, match="GPIO36 has no internal pull-up; fit an external 10 kOhm"):
        validate_pins("esp32-devkitc", {"s0": PinUse(36, "in", pull_up=True)})


def test_strapping_and_console_pins_are_warnings() -> None:
    warnings = validate_pins("esp32-devkitc", {"relay": (12, "out")})
    assert len(warnings) == 1 and "strapping pin" in warnings[0] and "flash voltage" in warnings[0]
    warnings = validate_pins("esp32-c3", {"s0": (9, "in"), "led": (19, "out")})
    assert any("BOOT button" in w for w in warnings) and any("native USB" in w for w in warnings)


def test_uart_pins_follow_the_silicon() -> None:
    # RP2040: each UART has fixed pins.
    with pytest.raises(PinError, match="UART0 TX cannot be on GP4; expected one of GP0, GP12, GP16"):
        validate_pins("pico-w", {"tx": PinUse(4, "uart_tx", uart=0)})
    assert validate_pins("pico-w", {"tx": PinUse(8, "uart_tx", uart=1), "rx": PinUse(9, "uart_rx", uart=1)}) == []
    with pytest.raises(PinError, match="esp32-c3 has no UART2; expected one of 0, 1"):
        validate_pins("esp32-c3", {"tx": PinUse(7, "uart_tx", uart=2)})
    with pytest.raises(PinError, match="UART0 is not free: UART0 carries the REPL"):
        validate_pins("esp32-devkitc", {"tx": PinUse(1, "uart_tx", uart=0)})


def test_bad_mode_or_pin_type_is_named() -> None:
    with pytest.raises(PinError, match="mode 'pwm' is not one of"):
        validate_pins("pico-w", {"x": (1, "pwm")})
    with pytest.raises(PinError, match="expected a GPIO number"):
        validate_pins("pico-w", {"x": ("GP1", "in")})
    with pytest.raises(PinError, match="expected PinUse"):
        validate_pins("pico-w", {"x": 3})  # type: ignore[dict-item]


# -- meter configs, as `microgrid flash` checks them ---------------------------


@pytest.mark.parametrize("board_name", METER_BOARDS)
@pytest.mark.parametrize("driver", DRIVERS)
def test_the_suggested_wiring_of_each_driver_fits_each_board(board_name: str, driver: str) -> None:
    cfg = {"meter": boards.suggested_meter_config(board_name, driver)}
    assert validate_config(board_name, cfg) == []
    uses = boards.meter_pin_uses(board_name, cfg["meter"])
    assert check_pins(board_name, uses).warnings == []


def test_driver_defaults_are_filled_in_as_the_firmware_does() -> None:
    uses = boards.meter_pin_uses("esp32-devkitc", {"type": "sdm630"})
    assert uses == {"meter.uart.tx": PinUse(17, "uart_tx", uart=2), "meter.uart.rx": PinUse(16, "uart_rx", uart=2)}
    uses = boards.meter_pin_uses("esp32-devkitc", {"type": "s0"})
    assert uses == {"meter.pin": PinUse(4, "in", pull_up=True)}
    assert boards.meter_pin_uses("esp32-devkitc", {"type": "simulated"}) == {}


def test_driver_defaults_on_a_board_without_those_pins_are_caught() -> None:
    # The CT driver's default pins (36, 39) do not exist on an ESP32-C3.
    problems = validate_config("esp32-c3", {"meter": {"type": "ct"}})
    assert problems[0].startswith("meter.v_pin=GPIO36: esp32-c3 has no GPIO36; expected one of GPIO0, GPIO1")
    # The UART drivers default to UART2, which the C3 lacks.
    assert validate_config("esp32-c3", {"meter": {"type": "pzem004t"}}) == ["meter.uart.id=2: esp32-c3 has no UART2; expected one of 0, 1"]
    assert validate_config("esp32-c3", {"meter": {"type": "pzem004t", "uart": {"id": 1}}}) == [
        "meter.uart.tx: UART1 of esp32-c3 has no default pin; set meter.uart.tx"]
    # UART1 of the ESP32 defaults to the flash pins.
    assert "SPI flash" in validate_config("esp32-devkitc", {"meter": {"type": "sdm120", "uart": {"id": 1}}})[0]


def test_de_pin_on_the_uart_pins_is_a_double_use() -> None:
    problems = validate_config("esp32-devkitc", {"meter": {"type": "sdm120", "de_pin": 16}})
    assert problems == ["meter.de_pin=GPIO16: GPIO16 is already used by meter.uart.rx; expected a pin no other function uses"]


def test_s0_without_internal_pull_up_is_accepted_with_pull_up_off() -> None:
    assert validate_config("esp32-devkitc", {"meter": {"type": "s0", "pin": 34}})
    assert validate_config("esp32-devkitc", {"meter": {"type": "s0", "pin": 34, "pull_up": False}}) == []


def test_unknown_meter_type_is_named() -> None:
    assert validate_config("pico-w", {"meter": {"type": "kamstrup"}})[0].startswith("meter.type='kamstrup': expected one of")


def test_meters_json_defaults_match_the_edge_drivers() -> None:
    """hardware/meters.json must say what the firmware really does."""
    src = {name: (REPO / "edge" / "meters" / f"{name}.py").read_text() for name in ("ct", "s0")}
    drivers = boards.load_data("meters.json")["drivers"]
    for key in ("v_pin", "i_pin"):
        found = re.search(rf'cfg\.get\("{key}", (\d+)\)', src["ct"])
        assert found and int(found.group(1)) == drivers["ct"]["pins"][key]["default"]
    found = re.search(r'cfg\.get\("pin", (\d+)\)', src["s0"])
    assert found and int(found.group(1)) == drivers["s0"]["pins"]["pin"]["default"]
    assert 'cfg.get("pull_up", True)' in src["s0"]
    board_src = (REPO / "edge" / "hal" / "board.py").read_text()
    assert 'cfg.get("id", 2)' in board_src and drivers["sdm120"]["uart_default_id"] == 2


# -- the coordinator's Raspberry Pi -------------------------------------------


def test_coordinator_assignments_fit_the_pi_header() -> None:
    assert boards.validate_coordinator_pins() == []
    a = boards.coordinator_assignments()
    assert {"relay_1", "status_led", "rs485_de"} <= set(a)
    assert a["relay_1"].safe_state == "disconnected" and a["relay_1"].gpio == boards.coordinator_pin("relay_1")


def test_a_configured_relay_on_a_used_pi_pin_is_refused() -> None:
    with pytest.raises(PinError, match="relay_3=GPIO22: GPIO22 is already used by status_led"):
        boards.validate_coordinator_pins({"relay_3": (22, "out")})
    with pytest.raises(KeyError, match="'relay_9' is not in hardware/coordinator_pi.json"):
        boards.coordinator_pin("relay_9")


# -- properties ---------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(METER_BOARDS), st.data())
def test_distinct_usable_pins_as_inputs_always_pass(board_name: str, data: st.DataObject) -> None:
    b = boards.board(board_name)
    pins = data.draw(st.lists(st.sampled_from(sorted(b.gpios)), unique=True, max_size=8))
    assert check_pins(board_name, {f"f{i}": (p, "in") for i, p in enumerate(pins)}).problems == []


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(METER_BOARDS), st.integers(-5, 60), st.sampled_from(["in", "out", "adc"]))
def test_any_single_assignment_passes_or_names_its_pin(board_name: str, pin: int, mode: str) -> None:
    report = check_pins(board_name, {"f": (pin, mode)})
    for line in report.problems:
        assert line.startswith("f=") and str(pin) in line and "expected" in line or "pull-up" in line
    b = boards.board(board_name)
    if pin not in b.gpios:
        assert report.problems


# -- documents ----------------------------------------------------------------

HARDWARE = REPO / "hardware"
# BCM GPIO -> 40-pin header position (Raspberry Pi pinout), written out independently.
PI_HEADER = {2: 3, 3: 5, 4: 7, 14: 8, 15: 10, 17: 11, 18: 12, 27: 13, 22: 15, 23: 16, 24: 18, 10: 19, 9: 21, 25: 22,
             11: 23, 8: 24, 7: 26, 0: 27, 1: 28, 5: 29, 6: 31, 12: 32, 13: 33, 19: 35, 16: 36, 26: 37, 20: 38, 21: 40}


def test_generated_documents_are_in_step_with_the_data() -> None:
    assert (HARDWARE / "bom.md").read_text() == boards.render_bom_markdown(), "run: python -m microgrid.hardware.boards"
    assert (HARDWARE / "pinmaps.md").read_text() == boards.render_pinmaps_markdown(), "run: python -m microgrid.hardware.boards"


def test_coordinator_header_pins_match_the_pi_pinout_and_the_document() -> None:
    doc = (HARDWARE / "coordinator-pi.md").read_text()
    for name, a in boards.coordinator_assignments().items():
        assert PI_HEADER[a.gpio] == a.header_pin, name
        assert re.search(rf"\| `{name}` \| {a.gpio} \| {a.header_pin} \|", doc), f"{name} missing from coordinator-pi.md"


def test_every_build_has_parts_with_part_numbers_for_a_known_board_and_driver() -> None:
    drivers = boards.load_data("meters.json")["drivers"]
    builds = boards.bills_of_materials()
    assert {b["meter"] for b in builds.values()} >= set(DRIVERS)
    for name, build in builds.items():
        assert build["board"] in boards.board_names(), name
        assert build["meter"] is None or build["meter"] in drivers, name
        for item in build["items"]:
            assert isinstance(item["qty"], int) and item["qty"] > 0
            assert item["part"] and item["manufacturer"] and item["part_number"], (name, item)


def test_human_documents_exist_and_link_safety() -> None:
    for doc in ("README.md", "wiring.md", "coordinator-pi.md", "safety.md", "bom.md", "pinmaps.md"):
        assert (HARDWARE / doc).stat().st_size > 500, doc
    assert "safety.md" in (HARDWARE / "README.md").read_text() and "safety.md" in (HARDWARE / "wiring.md").read_text()
    assert "rpi-lgpio" in (HARDWARE / "coordinator-pi.md").read_text()
