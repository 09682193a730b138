"""S0 pulse counting and the CT/VT ADC driver under MicroPython against
recorded pulse trains (with bounce and glitches) and sampled waveforms of
known power."""

from __future__ import annotations

import json

import pytest

from .mp import MEASUREMENT_TO_DICT, fixture, mp_json

S0_RUN = MEASUREMENT_TO_DICT + """
import json
from edge import hal
from edge.meters import open_meter
fx = json.loads(%(fx)r)
hal.load({"virtual_time": True, "pin": {"4": {"edges": fx["edges"], "level": 1}}})
m = open_meter({"type": "s0", "pin": 4, "impulses_per_kwh": fx["impulses_per_kwh"], "debounce_ms": %(debounce)d})
m.restore(%(restore)d, 7)
first = as_dict(m.read(0))
hal.advance(fx["end_ms"] - 1800 + 100)
mid = as_dict(m.read(1))
hal.advance(60000)
late = as_dict(m.read(2))
print(json.dumps([first, mid, late, m.pulses, m.bounces]))
"""


def run_s0(debounce: int, restore: int = 0) -> list:
    fx = fixture("s0_pulses.json")
    return mp_json(S0_RUN % {"fx": json.dumps(fx), "debounce": debounce, "restore": restore})  # type: ignore[return-value]


def test_s0_counts_each_pulse_once_despite_bounce_and_glitches() -> None:
    fx = fixture("s0_pulses.json")
    first, mid, late, pulses, bounces = run_s0(fx["debounce_ms"])
    assert pulses == fx["pulses"] and bounces > fx["pulses"]
    # 120 pulses at 1000 imp/kWh = 120 Wh, a 2 kW load.
    assert mid["import_wh"] == fx["wh"] and mid["power_w"] == fx["power_w"] and mid["flags"] == 0
    # Before two pulses there is no power figure: flagged, not invented.
    assert first["import_wh"] == 0 and first["flags"] == 1


def test_s0_without_debounce_would_overcount_which_is_why_it_exists() -> None:
    fx = fixture("s0_pulses.json")
    _, mid, _, pulses, _ = run_s0(0)
    assert pulses > fx["pulses"] and mid["import_wh"] > fx["wh"]


def test_s0_power_decays_when_pulses_stop_and_counts_continue_after_restore() -> None:
    _, mid, late, _, _ = run_s0(20, restore=5000)
    # One minute without a pulse: at most 1 Wh per 61.7 s, about 58 W.
    assert late["power_w"] < 60 and late["import_wh"] == mid["import_wh"] == 5120
    assert late["export_wh"] == 7


def test_s0_energy_reset_records_old_totals() -> None:
    fx = fixture("s0_pulses.json")
    got = mp_json(MEASUREMENT_TO_DICT + """
import json
from edge import hal
from edge.meters import open_meter
fx = json.loads(%r)
hal.load({"virtual_time": True, "pin": {"4": {"edges": fx["edges"]}}})
m = open_meter({"type": "s0", "pin": 4})
hal.advance(fx["end_ms"] // 2)
before = as_dict(m.read(0))
m.reset_energy()
after = as_dict(m.read(1))
hal.advance(fx["end_ms"])
print(json.dumps([before, after, as_dict(m.read(2))]))
""" % json.dumps(fx))
    before, after, later = got
    assert after["reset"] == ["energy_reset", before["import_wh"], 0] and after["import_wh"] == 0
    assert later["reset"] is None and later["import_wh"] == fx["wh"] - before["import_wh"]


@pytest.mark.parametrize("bad", ['"impulses_per_kwh": 0', '"impulses_per_kwh": 1.5', '"direction": "both"', '"debounce_ms": -1'])
def test_s0_bad_settings_are_refused_with_the_value(bad: str) -> None:
    got = mp_json("""
import json
from edge.meters import open_meter
try:
    open_meter(json.loads('{"type": "s0", %s}'))
    print(json.dumps("accepted"))
except ValueError as e:
    print(json.dumps(str(e)))
""" % bad)
    assert got != "accepted" and bad.split(":")[1].strip().strip('"') in got


CT_RUN = MEASUREMENT_TO_DICT + """
import json
from edge import hal
from edge.meters import open_meter
fx = json.loads(%(fx)r)
out = {}
for name, w in fx["cases"].items():
    hal.load({"adc": {"36": {"samples": w["v"]}, "39": {"samples": w["i"]}}})
    cfg = {"type": "ct", "v_pin": 36, "i_pin": 39, "samples": fx["samples"], "v_gain": w["v_gain"], "i_gain": w["i_gain"],
           "phase_cal": %(phase)s if %(phase)s is not None else w["phase_cal"]}
    m = open_meter(cfg)
    m.read(1000000)
    out[name] = as_dict(m.read(1000000 + 3600000))
print(json.dumps(out))
"""


def run_ct(phase: float | None = None) -> dict:
    fx = fixture("ct_waveforms.json")
    return mp_json(CT_RUN % {"fx": json.dumps(fx), "phase": json.dumps(phase).replace("null", "None")})  # type: ignore[return-value]


def test_ct_waveforms_give_known_rms_power_and_power_factor() -> None:
    fx = fixture("ct_waveforms.json")["cases"]
    got = run_ct()
    for name in ("kettle", "motor_lagging", "exporting"):
        w, m = fx[name], got[name]
        assert m["voltage_v"] == pytest.approx(w["v_rms"], rel=0.005), name
        assert m["current_a"] == pytest.approx(w["i_rms"], rel=0.01), name
        assert m["power_w"] == pytest.approx(w["power_w"], rel=0.01), name
        assert m["power_factor"] == pytest.approx(w["pf"], abs=0.01), name
        assert m["flags"] == 0
    # An hour at the measured power, integrated into the right counter.
    assert got["kettle"]["import_wh"] == pytest.approx(2070, rel=0.01) and got["kettle"]["export_wh"] == 0
    assert got["exporting"]["export_wh"] == pytest.approx(3396, rel=0.01) and got["exporting"]["import_wh"] == 0


def test_ct_without_phase_correction_misreads_a_lagging_load() -> None:
    fx = fixture("ct_waveforms.json")["cases"]
    got = run_ct(phase=1.0)
    err = abs(got["motor_lagging"]["power_w"] - fx["motor_lagging"]["power_w"]) / fx["motor_lagging"]["power_w"]
    assert err > 0.02


def test_ct_standby_load_is_flagged_below_the_accuracy_floor() -> None:
    assert run_ct()["standby"]["flags"] == 1


CALIBRATE = """
import json
from edge import hal
from edge.meters import open_meter
fx = json.loads(%(fx)r)
w = fx["cases"]["kettle"]
hal.load({"adc": {"36": {"samples": w["v"]}, "39": {"samples": w["i"]}}})
# Gains 10 %% and 20 %% off, as an uncalibrated board would be.
m = open_meter({"type": "ct", "v_pin": 36, "i_pin": 39, "samples": 400, "v_gain": w["v_gain"] * 1.1,
                "i_gain": w["i_gain"] * 0.8, "phase_cal": w["phase_cal"]})
out = []
for ref in (%(refs)s):
    try:
        out.append(m.calibrate(*ref))
    except ValueError as e:
        out.append(str(e))
out.append([m.measure()[0], m.measure()[2]])
print(json.dumps(out))
"""


def test_ct_calibration_from_a_reference_load_restores_true_readings() -> None:
    fx = fixture("ct_waveforms.json")
    got = mp_json(CALIBRATE % {"fx": json.dumps(fx), "refs": "(2070, 230.0),"})
    gains, (vrms, p) = got
    assert gains["v_gain"] == pytest.approx(fx["cases"]["kettle"]["v_gain"], rel=0.005)
    assert vrms == pytest.approx(230.0, rel=0.001) and p == pytest.approx(2070, rel=0.001)


def test_ct_calibration_refuses_a_load_under_60_w_and_says_why() -> None:
    fx = fixture("ct_waveforms.json")
    got = mp_json(CALIBRATE % {"fx": json.dumps(fx), "refs": "(40,), (2070, 20)"})
    assert "40 W is too small" in got[0] and "at least 60 W" in got[0]
    assert "reference voltage 20" in got[1]
