"""PZEM-004T and Eastron SDM120/SDM630 drivers under MicroPython against
register frames built by pymodbus (valid, corrupt, foreign, exceptions,
silence): decoded exactly, corrupt frames rejected without a crash."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings, strategies as st
from pymodbus.framer.rtu import FramerRTU

from .mp import MEASUREMENT_TO_DICT, fixture, mp_json

RUN_CASES = MEASUREMENT_TO_DICT + """
import json
from edge import hal
from edge.meters import open_meter
from edge.meters.base import MeterError
cfg = json.loads(%(cfg)r)
cases = json.loads(%(cases)r)
out = []
for case in cases:
    hal.load({"virtual_time": True, "uart": {"2": {"replies": case["replies"]}}})
    meter = open_meter(cfg)
    try:
        for _ in range(case.get("reads", 1)):
            m = meter.read(0)
        out.append({"ok": as_dict(m), "writes": [w.hex() for w in hal.uart({"id": 2}).writes]})
    except MeterError as e:
        out.append({"error": str(e), "writes": [w.hex() for w in hal.uart({"id": 2}).writes]})
print(json.dumps(out))
"""


def run_cases(cfg: dict, cases: list[dict]) -> list[dict]:
    return mp_json(RUN_CASES % {"cfg": json.dumps(cfg), "cases": json.dumps(cases)})  # type: ignore[return-value]


def check(cases: list[dict], results: list[dict]) -> None:
    for case, got in zip(cases, results):
        if "error" in case:
            assert "error" in got, (case["name"], got)
            assert case["error"] in got["error"], (case["name"], got["error"])
        else:
            assert "ok" in got, (case["name"], got)
            for key, want in case["expect"].items():
                assert got["ok"][key] == want, (case["name"], key, got["ok"][key], want)


def test_pzem004t_decodes_valid_frames_and_rejects_corrupt_ones() -> None:
    fx = fixture("pzem004t.json")
    results = run_cases({"type": "pzem004t", "uart": {"id": 2}}, fx["cases"])
    check(fx["cases"], results)
    # Every request on the wire is the one pymodbus builds.
    for got in results:
        assert set(got["writes"]) == {fx["request"]}


def test_pzem004t_reading_carries_current_frequency_pf_and_flags_records() -> None:
    fx = fixture("pzem004t.json")
    got = run_cases({"type": "pzem004t", "uart": {"id": 2}}, [fx["cases"][2]])[0]["ok"]
    assert ["current", "A", 0.012] in got["extra"] and ["frequency", "Hz", 50.1] in got["extra"]
    assert ["power_factor", None, 0.76] in got["extra"] and ["flags", None, 1] in got["extra"]


def test_pzem004t_counter_drop_is_a_reset_record_with_the_old_totals() -> None:
    fx = fixture("pzem004t.json")
    case = [c for c in fx["cases"] if c["name"].startswith("counter dropped")][0]
    got = run_cases({"type": "pzem004t", "uart": {"id": 2}}, [case])[0]["ok"]
    assert ["reset", None, "counter_dropped"] in got["extra"]
    assert ["reset_import_wh", "Wh", 123456] in got["extra"] and ["reset_export_wh", "Wh", 0] in got["extra"]


def test_pzem004t_energy_reset_sends_function_0x42_and_records_the_reset() -> None:
    fx = fixture("pzem004t.json")["reset_energy"]
    script = MEASUREMENT_TO_DICT + """
import json
from edge import hal
from edge.meters import open_meter
from edge.meters.base import MeterError
fx = json.loads(%r)
hal.load({"virtual_time": True, "uart": {"2": {"replies": [fx["after"][0], fx["echo"], fx["after"][1], fx["refused"], fx["refused"]]}}})
m = open_meter({"type": "pzem004t", "uart": {"id": 2}})
m.read(0)
m.reset_energy()
after = as_dict(m.read(1))
try:
    m.reset_energy()
    refused = None
except MeterError as e:
    refused = str(e)
print(json.dumps([after, refused, [w.hex() for w in hal.uart({"id": 2}).writes]]))
""" % json.dumps(fx)
    after, refused, writes = mp_json(script)
    assert after["reset"] == ["energy_reset", 123456, 0] and after["import_wh"] == 3
    assert "exception 3" in refused
    assert writes[1] == fx["request"] == "0142" + "8011"


@pytest.mark.parametrize("model", ["sdm120", "sdm630"])
def test_eastron_decodes_float_registers_and_rejects_corrupt_frames(model: str) -> None:
    fx = fixture("sdm.json")[model]
    results = run_cases({"type": model, "uart": {"id": 2}, "de_pin": 5}, fx["cases"])
    check(fx["cases"], results)
    ok = results[0]
    assert ok["writes"] == fx["requests"]


def test_eastron_direction_pin_is_high_only_while_sending() -> None:
    fx = fixture("sdm.json")["sdm120"]["cases"][0]
    script = """
import json
from edge import hal
from edge.meters import open_meter
hal.load({"virtual_time": True, "uart": {"2": {"replies": %r}}})
m = open_meter({"type": "sdm120", "uart": {"id": 2}, "de_pin": 5})
m.read(0)
print(json.dumps([lvl for t, lvl in hal.pin(5, hal.PIN_OUT).history]))
""" % fx["replies"]
    assert mp_json(script) == [0, 1, 0, 1, 0]


def test_unknown_meter_type_names_the_supported_ones() -> None:
    got = mp_json("""
import json
from edge.meters import open_meter
try:
    open_meter({"type": "pzem017"})
except ValueError as e:
    print(json.dumps(str(e)))
""")
    assert "pzem017" in got and "sdm630" in got and "s0" in got


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=40))
def test_crc16_frames_match_pymodbus_on_the_wire(data: bytes) -> None:
    got = mp_json("import json\nfrom edge.modbus import frame\nprint(json.dumps(frame(bytes.fromhex(%r)).hex()))" % data.hex())
    assert bytes.fromhex(got) == data + struct.pack(">H", FramerRTU.compute_CRC(data))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=30), min_size=2, max_size=2))
def test_random_garbage_replies_raise_meter_error_never_crash(replies: list[bytes]) -> None:
    results = run_cases({"type": "pzem004t", "uart": {"id": 2}}, [{"name": "garbage", "replies": [r.hex() or None for r in replies]}])
    assert "error" in results[0]


def _exact_scaled(bits: int, scale: int) -> int:
    """The float32 with these bits times `scale`, rounded half up, from
    CPython's exact arithmetic (an independent reference)."""
    from fractions import Fraction

    value = Fraction(struct.unpack(">f", struct.pack(">I", bits))[0]) * scale
    return int(value + Fraction(1, 2)) if value >= 0 else -int(-value + Fraction(1, 2))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=0x7F7FFFFF), min_size=20, max_size=20))
def test_float32_energy_registers_convert_to_wh_exactly_in_integers(bits: list[int]) -> None:
    # Every finite non-negative float32 (0x7F7FFFFF is the largest), times
    # 1000 (kWh -> Wh), to the nearest Wh: no float multiplication, so the
    # 32-bit runtime gets the same figure as exact arithmetic.
    bits = bits + [0x47C0E6B3, 0x4640E6B6, 0x00000001, 0x3F000000, 0x3A83126F]  # 98765.4, 12345.678, tiny, 0.5, 0.001
    got = mp_json("""
import json
from edge.modbus import float32_scaled
out = []
for b in json.loads(%r):
    out.append(float32_scaled([b >> 16, b & 0xFFFF], 0, 1000))
print(json.dumps(out))
""" % json.dumps(bits))
    assert got == [_exact_scaled(b, 1000) for b in bits]


def test_float32_registers_that_are_not_energy_are_refused() -> None:
    got = mp_json("""
import json
from edge.modbus import float32_scaled
out = []
for b in (0x7FC00000, 0x7F800000, 0xBF800000, 0x80000000):
    try:
        out.append(float32_scaled([b >> 16, b & 0xFFFF], 0, 1000))
    except ValueError as e:
        out.append(str(e))
print(json.dumps(out))
""")
    assert "NaN" in got[0] and "infinity" in got[1] and "negative" in got[2]
    assert got[3] == 0  # -0.0 is zero


def test_pzem004t_energy_stays_exact_beyond_the_32_bit_small_int_range() -> None:
    # 2^30 Wh and more are long ints on an ESP32; the driver never lets a
    # float touch the energy, up to the register's 2^32 - 1 Wh.
    from .fixtures.make_fixtures import pzem_regs, reply

    cases = [{"name": str(wh), "replies": [reply(1, pzem_regs(230.0, 1.0, 230.0, wh, 50.0, 1.0, False))],
              "expect": {"import_wh": wh}} for wh in (0x3FFFFFFF, 0x40000000, 0x9876ABCD, 0xFFFFFFFF)]
    check(cases, run_cases({"type": "pzem004t", "uart": {"id": 2}}, cases))
