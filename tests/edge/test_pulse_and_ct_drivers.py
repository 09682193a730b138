"""S0 pulse counting and the CT/VT ADC driver under MicroPython against
recorded pulse trains (with bounce and glitches), clean pulse streams with
Python stalled for seconds, recorded waveforms and synthesised mains
signals of known power, on the scripted hardware's virtual time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from .mp import MEASUREMENT_TO_DICT, fixture, mp_json

# -- S0: debounce, power, restore, reset ------------------------------------

S0_RUN = MEASUREMENT_TO_DICT + """
import json
from edge import hal
from edge.meters import open_meter
fx = json.loads(%(fx)r)
hal.load({"virtual_time": True, "pin": {"4": {"edges": fx["edges"], "level": 1}}})
m = open_meter({"type": "s0", "pin": 4, "impulses_per_kwh": fx["impulses_per_kwh"], "debounce_ms": %(debounce)d,
                "counter": "irq"})
m.restore(%(restore)d, 7)
first = as_dict(m.read(0))
hal.advance(fx["end_ms"] - 1800 + 100)
mid = as_dict(m.read(1))
hal.advance(60000)
late = as_dict(m.read(2))
print(json.dumps([first, mid, late, m.pulses, m.bounces, m.hard]))
"""


def run_s0(debounce: int, restore: int = 0) -> list:
    fx = fixture("s0_pulses.json")
    return mp_json(S0_RUN % {"fx": json.dumps(fx), "debounce": debounce, "restore": restore})  # type: ignore[return-value]


def test_s0_irq_counts_each_pulse_once_despite_bounce_and_glitches() -> None:
    fx = fixture("s0_pulses.json")
    first, mid, late, pulses, bounces, hard = run_s0(fx["debounce_ms"])
    assert hard is True
    assert pulses == fx["pulses"] and bounces > fx["pulses"]
    # 120 pulses at 1000 imp/kWh = 120 Wh, a 2 kW load.
    assert mid["import_wh"] == fx["wh"] and mid["power_w"] == fx["power_w"] and mid["flags"] == 0
    # Before two pulses there is no power figure: flagged, not invented.
    assert first["import_wh"] == 0 and first["flags"] == 1


def test_s0_without_debounce_would_overcount_which_is_why_it_exists() -> None:
    fx = fixture("s0_pulses.json")
    _, mid, _, pulses, _, _ = run_s0(0)
    assert pulses > fx["pulses"] and mid["import_wh"] > fx["wh"]


def test_s0_power_decays_when_pulses_stop_and_counts_continue_after_restore() -> None:
    _, mid, late, _, _, _ = run_s0(20, restore=5000)
    # One minute without a pulse: at most 1 Wh per 61.7 s, about 58 W.
    assert late["power_w"] < 60 and late["import_wh"] == mid["import_wh"] == 5120
    assert late["export_wh"] == 7


@pytest.mark.parametrize("counter", ["irq", "pcnt"])
def test_s0_energy_reset_records_old_totals(counter: str) -> None:
    fx = fixture("s0_stream.json")
    got = mp_json(MEASUREMENT_TO_DICT + """
import json
from edge import hal
from edge.meters import open_meter
fx = json.loads(%r)
hal.load({"virtual_time": True, "pin": {"4": {"edges": fx["edges"]}}})
m = open_meter({"type": "s0", "pin": 4, "counter": %r})
hal.advance(fx["end_ms"] // 2)
before = as_dict(m.read(0))
m.reset_energy()
after = as_dict(m.read(1))
hal.advance(fx["end_ms"])
print(json.dumps([before, after, as_dict(m.read(2)), m.counter]))
""" % (json.dumps(fx), counter))
    before, after, later, used = got
    assert used == counter
    assert 0 < before["import_wh"] < fx["pulses"]
    assert after["reset"] == ["energy_reset", before["import_wh"], 0] and after["import_wh"] == 0
    assert later["reset"] is None and later["import_wh"] == fx["pulses"] - before["import_wh"]


@pytest.mark.parametrize("bad", ['"impulses_per_kwh": 0', '"impulses_per_kwh": 1.5', '"direction": "both"', '"debounce_ms": -1',
                                 '"pin": 99', '"counter": "soft"', '"pcnt_unit": 8'])
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
    key, value = bad.split(":")
    assert got != "accepted" and value.strip().strip('"') in got and "meter." + key.strip('"') in got


# -- S0 with Python stalled --------------------------------------------------

# The firmware's life on a bad day: Python busy for 6 s at a time (flash
# erases, signing, a garbage collection on a full heap), then a short idle
# pass in which the firmware polls the meter and takes a reading.
S0_STALLS = MEASUREMENT_TO_DICT + """
import json
from edge import hal
from edge.meters import open_meter
import edge.meters.s0 as s0
fx = json.loads(%(fx)r)
script = {"virtual_time": True, "pin": {"4": {"edges": fx["edges"], "level": 1}}}
script.update(json.loads(%(hw)r))
hal.load(script)
if %(limit)r:
    s0.PCNT_LIMIT = %(limit)r
m = open_meter(json.loads(%(cfg)r))
t = 0
queued = 0
while t < fx["end_ms"] + 1000:
    queued += hal.stall(%(stall)d)
    m.poll(0) if %(poll)r else None
    hal.sleep_ms(150)
    t += %(stall)d + 150
last = as_dict(m.read(0))
print(json.dumps({"wh": last["import_wh"], "counter": m.counter, "hard": m.hard, "queued": queued}))
"""


def run_stalls(cfg: dict, hw: dict | None = None, stall_ms: int = 6000, limit: int = 0, poll: bool = True) -> dict:
    fx = fixture("s0_stream.json")
    return mp_json(S0_STALLS % {"fx": json.dumps(fx), "hw": json.dumps(hw or {}), "cfg": json.dumps(cfg),  # type: ignore[return-value]
                                "stall": stall_ms, "limit": limit, "poll": poll})


def test_s0_pcnt_loses_no_pulse_through_6_s_python_stalls() -> None:
    fx = fixture("s0_stream.json")
    got = run_stalls({"type": "s0", "pin": 4})
    assert got["counter"] == "pcnt"  # "auto" picks the hardware counter where there is one
    assert fx["pulses"] - got["wh"] == 0  # 1 Wh per pulse at 1000 imp/kWh


def test_s0_hard_irq_fallback_loses_no_pulse_through_6_s_python_stalls() -> None:
    # A board without esp32.PCNT: the hard IRQ takes each edge and its time
    # at the edge (its handler runs with the heap locked: no allocation).
    fx = fixture("s0_stream.json")
    got = run_stalls({"type": "s0", "pin": 4}, {"pcnt": False})
    assert got["counter"] == "irq" and got["hard"] is True
    assert fx["pulses"] - got["wh"] == 0


def test_s0_soft_irq_loses_pulses_in_stalls_which_is_why_the_driver_avoids_it() -> None:
    # A port without hard IRQs: callbacks wait for Python, at most 4 in the
    # scheduler queue, and see the pin and the time of when they run.
    fx = fixture("s0_stream.json")
    got = run_stalls({"type": "s0", "pin": 4}, {"pcnt": False, "hard_irq": False})
    assert got["counter"] == "irq" and got["hard"] is False and got["queued"] > 0
    lost = fx["pulses"] - got["wh"]
    assert lost > fx["pulses"] // 2, got


def test_s0_pcnt_wraps_at_its_limit_unseen_only_if_not_polled_in_time() -> None:
    fx = fixture("s0_stream.json")
    # Limit 40 instead of 32767 to make the wrap happen in a short test:
    # polled every 6 s (at most 15 pulses), nothing is lost ...
    polled = run_stalls({"type": "s0", "pin": 4}, limit=40)
    assert polled["counter"] == "pcnt" and polled["wh"] == fx["pulses"]
    # ... read only once after 120 s (178 pulses, more than 40), whole
    # turns of the counter are lost: the documented limit.
    once = run_stalls({"type": "s0", "pin": 4}, limit=40, stall_ms=125000, poll=False)
    assert (fx["pulses"] - once["wh"]) % 40 == 0 and once["wh"] < fx["pulses"]


def test_s0_counter_pcnt_is_refused_on_a_board_without_one() -> None:
    got = mp_json("""
import json
from edge import hal
from edge.meters import open_meter
hal.load({"virtual_time": True, "pcnt": False})
try:
    open_meter({"type": "s0", "pin": 4, "counter": "pcnt"})
    print(json.dumps("accepted"))
except ValueError as e:
    print(json.dumps(str(e)))
""")
    assert "meter.counter='pcnt'" in got and "esp32.PCNT" in got


def test_scripted_hard_irq_handler_that_allocates_fails_as_on_a_board() -> None:
    got = mp_json("""
import json
from edge import hal
hal.load({"virtual_time": True, "pin": {"4": {"edges": [[10, 0], [20, 1]]}}})
p = hal.pin(4, hal.PIN_IN)
seen = []
hal.pin_irq(p, lambda pin: seen.append([pin.value()]), hal.IRQ_FALLING)
try:
    hal.advance(50)
    print(json.dumps("no error"))
except MemoryError:
    print(json.dumps("MemoryError"))
""")
    assert got == "MemoryError"


# -- CT: recorded waveforms ---------------------------------------------------

CT_RUN = MEASUREMENT_TO_DICT + """
import json
from edge import hal
from edge.meters import open_meter
fx = json.loads(%(fx)r)
out = {}
for name, w in fx["cases"].items():
    hal.load({"virtual_time": True, "adc": {"36": {"samples": w["v"]}, "39": {"samples": w["i"]}}})
    cfg = {"type": "ct", "v_pin": 36, "i_pin": 39, "v_gain": w["v_gain"], "i_gain": w["i_gain"],
           "phase_cal": %(phase)s if %(phase)s is not None else w["phase_cal"]}
    m = open_meter(cfg)
    m.read(0)
    hal.sleep_ms(3600000 - 201)
    out[name] = as_dict(m.read(0))
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


def test_ct_sampling_loop_allocates_nothing_so_no_gc_pause_splits_a_window() -> None:
    # Bytes allocated over a whole window of 400 pairs, the collector off:
    # only the call's own frame (a function with this many locals gets its
    # frame from the heap, once per window, freed on return). A boxed float
    # or a long int per pair would be kilobytes (the esp32-like runtime
    # has the ESP32's 31-bit small ints).
    w = fixture("ct_waveforms.json")["cases"]["kettle"]
    got = mp_json("""
import gc, json
from edge import hal
from edge.meters import open_meter
w = json.loads(%r)
hal.load({"virtual_time": True, "adc": {"36": {"samples": w["v"]}, "39": {"samples": w["i"]}}})
m = open_meter({"type": "ct", "v_gain": w["v_gain"], "i_gain": w["i_gain"], "phase_cal": w["phase_cal"]})
m.window()
gc.collect()
gc.disable()
before = gc.mem_alloc()
n = m._sample()
used = gc.mem_alloc() - before
gc.enable()
print(json.dumps([n, used, m.window()[2]]))
""" % json.dumps(w))
    n, used, power = got
    assert n == 400 and used < 1024, (n, used)
    assert power == pytest.approx(w["power_w"], rel=0.01)


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
hal.load({"virtual_time": True, "adc": {"36": {"samples": w["v"]}, "39": {"samples": w["i"]}}})
# Gains 10 %% and 20 %% off, as an uncalibrated board would be.
m = open_meter({"type": "ct", "v_pin": 36, "i_pin": 39, "v_gain": w["v_gain"] * 1.1,
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


# -- CT: synthesised mains signals through the documented front end -----------

# hardware/wiring.md: SCT-013-000 (100 A : 50 mA) into an 18 Ohm burden; a
# 9 V AC adapter (325 V peak -> 15 V peak) into a 180k/10k divider.
CT_RATIO, BURDEN_OHM, VT_RATIO, V_DIVIDER = 2000, 18.0, 21.7, 19.0


def adc_peak_uv_for_current(i_rms: float) -> float:
    return i_rms * math.sqrt(2) / CT_RATIO * BURDEN_OHM * 1e6


def adc_peak_uv_for_voltage(v_rms: float) -> float:
    return v_rms * math.sqrt(2) / VT_RATIO / V_DIVIDER * 1e6


def signals(hz: float, read_us: int, loads: list[list[float]], v_rms: float = 230.0, noise_uv: int = 1000) -> dict:
    """Scripted ADC signals: `loads` [[from_ms, i_rms, pf], ...] (pf < 0:
    exporting; the current lags the voltage by acos(|pf|))."""
    steps = []
    for t, i_rms, pf in loads:
        phase = -math.degrees(math.acos(abs(pf))) + (180 if pf < 0 else 0)
        steps.append([t, adc_peak_uv_for_current(i_rms), phase])
    return {"virtual_time": True, "adc": {
        "36": {"signal": {"hz": hz, "peak_uv": adc_peak_uv_for_voltage(v_rms), "noise_uv": noise_uv, "seed": 7},
               "read_us": read_us},
        "39": {"signal": {"hz": hz, "steps": steps, "noise_uv": noise_uv, "seed": 11}, "read_us": read_us}}}


def true_energy_j(loads: list[list[float]], t0_us: int, t1_us: int, v_rms: float = 230.0) -> tuple[float, float]:
    """(import J, export J) of the step loads between two times."""
    imp = exp = 0.0
    for k, (start, i_rms, pf) in enumerate(loads):
        end = loads[k + 1][0] if k + 1 < len(loads) else 1e12
        a, b = max(start * 1000, t0_us), min(end * 1000, t1_us)
        if b > a:
            e = v_rms * i_rms * pf * (b - a) / 1e6
            if e >= 0:
                imp += e
            else:
                exp -= e
    return imp, exp


# A firmware's day: between readings it waits in passes of at most 1 s,
# giving the meter its idle time first (Firmware.wait); every `interval_s`
# it takes a reading, then signs and sends for 300 ms with Python busy.
CT_DAY = MEASUREMENT_TO_DICT + """
import json
from edge import hal
from edge.meters import open_meter
hal.load(json.loads(%(script)r))
m = open_meter(json.loads(%(cfg)r))
t0 = hal.now_us()  # the first window books its own span: the truth starts here
first = as_dict(m.read(0))
readings = []
gaps = []
for k in range(%(readings)d):
    start = hal.ticks_ms()
    while hal.ticks_diff(hal.ticks_ms(), start) < %(interval_ms)d - 1000:
        if %(idle)r:
            used = m.poll(1000)
            if used < 1000:
                hal.sleep_ms(1000 - used)
        else:
            hal.sleep_ms(1000)
    readings.append(as_dict(m.read(0)))
    busy = hal.now_us()
    hal.stall(%(busy_ms)d)
    gaps.append([busy, hal.now_us()])
t1 = hal.now_us()
imp, exp = m.energy_mj()
print(json.dumps({"first": first, "readings": readings, "t0": t0, "t1": t1, "imp_mj": imp, "exp_mj": exp,
                  "windows": m.windows, "pairs": m.pairs, "gaps": gaps}))
"""


def run_day(script: dict, cfg: dict, readings: int, interval_ms: int = 10000, idle: bool = True, busy_ms: int = 300) -> dict:
    return mp_json(CT_DAY % {"script": json.dumps(script), "cfg": json.dumps(cfg), "readings": readings,  # type: ignore[return-value]
                             "interval_ms": interval_ms, "idle": idle, "busy_ms": busy_ms})


def energy_error(got: dict, loads: list[list[float]]) -> tuple[float, float, float]:
    """(error % of the energy that flowed, error of import minus export in
    J, the energy that flowed (import + export) in J) between the start of
    the first window and the end of the last (the run ends with the
    firmware busy after it)."""
    imp, exp = true_energy_j(loads, got["t0"], got["gaps"][-1][0])
    err_j = (got["imp_mj"] - got["exp_mj"]) / 1000 - (imp - exp)
    return 100 * abs(err_j) / (imp + exp), err_j, imp + exp


def direction_errors(got: dict, loads: list[list[float]]) -> tuple[float, float]:
    """|import error|, |export error| in J."""
    imp, exp = true_energy_j(loads, got["t0"], got["gaps"][-1][0])
    return abs(got["imp_mj"] / 1000 - imp), abs(got["exp_mj"] / 1000 - exp)


def gap_bound_j(got: dict, loads: list[list[float]], v_rms: float = 230.0) -> float:
    """The stated allowance for load steps between windows: |step| x gap / 2
    for each step inside one of the firmware's busy spells (the last one
    is after the run), and |step| x 1 ms for the others (the sub-ms gaps
    between windows, timed in whole ms)."""
    p = [v_rms * i * pf for _, i, pf in loads]
    total = 0.0
    for k in range(1, len(loads)):
        t = loads[k][0] * 1000
        step = abs(p[k] - p[k - 1])
        inside = [b - a for a, b in got["gaps"][:-1] if a <= t < b]
        total += step * (inside[0] / 2e6 if inside else 0.001)
    return total


def reversal_bound_j(loads: list[list[float]], window_s: float, v_rms: float = 230.0) -> float:
    """The stated allowance per counter for flow reversing inside a window
    (the window books its net): min(|P before|, |P after|) x window."""
    p = [v_rms * i * pf for _, i, pf in loads]
    return sum(min(abs(a), abs(b)) * window_s for a, b in zip(p, p[1:]) if (a < 0) != (b < 0))


def test_ct_default_gains_read_the_documented_18_ohm_burden_right() -> None:
    # 9 A and 230 V at the clamp, no calibration: the defaults alone.
    loads = [[0, 9.0, 1.0]]
    got = run_day(signals(50, 97, loads), {"type": "ct"}, 1, interval_ms=2000)
    r = got["readings"][0]
    assert r["current_a"] == pytest.approx(9.0, rel=0.01)
    assert r["voltage_v"] == pytest.approx(230.0, rel=0.01)
    assert r["power_w"] == pytest.approx(2070, rel=0.01)


@pytest.mark.parametrize("hz,read_us", [(50, 97), (60, 97), (50, 151)])
def test_ct_energy_within_1_percent_for_steady_sine_loads_at_any_sampling_rate(hz: int, read_us: int) -> None:
    # 97 us per conversion: 103.1 pairs per 50 Hz cycle, 85.9 per 60 Hz one;
    # 151 us: 66.2. Never a whole number: a window of a fixed sample count
    # would end part-way through a cycle.
    for i_rms, pf in ((9.0, 1.0), (12.0, 0.8), (15.0, -0.98), (1.0, 1.0)):
        loads = [[0, i_rms, pf]]
        got = run_day(signals(hz, read_us, loads), {"type": "ct", "mains_hz": hz}, 1, interval_ms=6000)
        err, err_j, flow_j = energy_error(got, loads)
        assert err <= 1.0, (i_rms, pf, err, err_j, flow_j)
        r = got["readings"][0]
        assert r["power_w"] == pytest.approx(230 * i_rms * pf, rel=0.01), (i_rms, pf, r)
        assert r["power_factor"] == pytest.approx(pf, abs=0.01)


# A load that changes every 1.7 s: a kettle, a fridge motor, solar export
# beating the house load, standby. Steps fall anywhere between windows.
VARYING = [[0, 9.0, 1.0], [1700, 3.0, 0.7], [3400, 14.0, -0.99], [5100, 0.5, 0.9], [6800, 12.0, 0.95],
           [8500, 6.0, -0.97], [10200, 9.0, 1.0], [11900, 2.0, 0.8], [13600, 15.0, 1.0], [15300, 4.0, -0.9],
           [17000, 10.0, 0.98], [18700, 1.0, 1.0], [20400, 8.0, -1.0], [22100, 11.0, 0.85], [23800, 3.0, 1.0],
           [25500, 7.0, 0.9], [27200, 13.0, -0.95], [28900, 5.0, 1.0]]


@pytest.mark.parametrize("hz", [50, 60])
def test_ct_energy_follows_a_load_varying_across_the_interval(hz: int) -> None:
    window_s = 5 / hz
    # The firmware idle between readings: windows back to back take in
    # every step, wherever it falls.
    idle = run_day(signals(hz, 97, VARYING), {"type": "ct", "mains_hz": hz}, 2, busy_ms=0)
    err, err_j, flow_j = energy_error(idle, VARYING)
    assert err <= 1.0, (err, err_j, flow_j)
    # Import and export are booked apart, each within its allowance for the
    # flow reversing inside a window.
    for e in direction_errors(idle, VARYING):
        assert e <= 0.01 * flow_j + reversal_bound_j(VARYING, window_s), (e, direction_errors(idle, VARYING))
    # With 300 ms of signing and sending after each reading: steps inside
    # those gaps cost what the driver states, no more.
    busy = run_day(signals(hz, 97, VARYING), {"type": "ct", "mains_hz": hz}, 2)
    err_busy, err_busy_j, flow_busy_j = energy_error(busy, VARYING)
    assert abs(err_busy_j) <= 0.01 * flow_busy_j + gap_bound_j(busy, VARYING), (err_busy, err_busy_j)
    # One window per 10 s reading (no idle sampling) stands for the whole
    # interval: the error that this driver's idle sampling removes.
    sparse = run_day(signals(hz, 97, VARYING), {"type": "ct", "mains_hz": hz}, 2, idle=False)
    err_sparse = energy_error(sparse, VARYING)[0]
    assert err_sparse > 10 * max(err, 0.5), (err_sparse, err)


def test_ct_windows_span_whole_mains_cycles_at_50_and_60_hz() -> None:
    for hz in (50, 60):
        got = run_day(signals(hz, 97, [[0, 9.0, 1.0]]), {"type": "ct", "mains_hz": hz, "cycles": 10}, 1,
                      interval_ms=2000)
        # 10 cycles / (2 x 97 us per pair), rounded up to the pair that crosses the end.
        assert got["pairs"] == math.ceil(10 / hz / 194e-6), (hz, got["pairs"])


def test_ct_windows_and_energy_stay_right_across_the_ticks_us_wrap_and_long_gaps() -> None:
    # In the esp32-like runtime (as on an ESP32) ticks_us wraps every 2^30
    # us (17.9 min). A steady 2 kW load: one window a day for 5 days (the
    # firmware never idle: gaps booked by the trapezoid), then windows back
    # to back across the microsecond wrap.
    script = signals(50, 97, [[0, 9.0, 1.0]])
    got = mp_json(MEASUREMENT_TO_DICT + """
import json
from edge import hal
from edge.meters import open_meter
hal.load(json.loads(%r))
m = open_meter({"type": "ct"})
t0 = hal.now_us()
m.read(0)
day = 86400000
for k in range(5):
    hal.sleep_ms(day)
    m.read(0)
wrap_us = 5 * day * 1000 + (1 << 30) - 5 * day * 1000 %% (1 << 30)
hal.sleep_ms((wrap_us - 10000000 - hal.now_us()) // 1000)
pairs = []
while hal.now_us() < wrap_us + 10000000:
    m.poll(1000)
    pairs.append(m.pairs)
r = as_dict(m.read(0))
imp, exp = m.energy_mj()
print(json.dumps({"t0": t0, "t1": hal.now_us(), "imp_mj": imp, "exp_mj": exp, "pairs": [min(pairs), max(pairs)], "r": r}))
""" % json.dumps(script))
    true_j = 2070.0 * (got["t1"] - got["t0"]) / 1e6
    assert got["imp_mj"] / 1000 == pytest.approx(true_j, rel=0.005) and got["exp_mj"] == 0
    # Every window spanned its 5 cycles: 100 ms at 194 us a pair.
    assert got["pairs"] == [516, 516]
    assert got["r"]["power_w"] == pytest.approx(2070, rel=0.01)


@pytest.mark.parametrize("bad,key", [
    ('"i_gain": 0.00094', "meter.i_gain=0.00094"),  # an old per-count gain
    ('"v_pin": 36, "i_pin": 36', "meter.i_pin=36"),
    ('"mains_hz": 100', "meter.mains_hz=100"),
    ('"cycles": 0', "meter.cycles=0"),
    ('"burden_ohm": 0', "meter.burden_ohm=0"),
    ('"phase_cal": 5', "meter.phase_cal=5"),
])
def test_ct_bad_settings_are_refused_naming_key_and_value(bad: str, key: str) -> None:
    got = mp_json("""
import json
from edge.meters import validate
try:
    validate(json.loads('{"type": "ct", %s}'))
    print(json.dumps("accepted"))
except ValueError as e:
    print(json.dumps(str(e)))
""" % bad)
    assert key in got and "expected" in got, got


# -- validate(): every driver's keys -------------------------------------------

@pytest.mark.parametrize("cfg,expect", [
    ({"type": "pzem004t", "address": 300}, "config meter.address=300: expected an integer in 1..248"),
    ({"type": "sdm120", "address": 300}, "config meter.address=300: expected an integer in 1..247"),
    ({"type": "sdm630", "address": 0}, "config meter.address=0: expected an integer in 1..247"),
    ({"type": "sdm120", "uart": {"baud": 1234}}, "config meter.uart.baud=1234: expected one of 1200, 2400"),
    ({"type": "pzem004t", "uart": {"baud": 115200}}, "config meter.uart.baud=115200: expected one of 9600"),
    ({"type": "pzem004t", "uart": {"id": 2, "tx": 60}}, "config meter.uart.tx=60: expected a GPIO number"),
    ({"type": "sdm120", "de_pin": "4"}, "config meter.de_pin='4': expected a GPIO number"),
    ({"type": "pzem004t", "adress": 2}, "config meter.adress: not a pzem004t setting"),
    ({"type": "s0", "pin": -1}, "config meter.pin=-1: expected a GPIO number"),
    ({"type": "simulated", "profile": "factory"}, "config meter.profile='factory': expected one of"),
    ({"type": "kamstrup"}, "config meter.type='kamstrup': expected one of simulated"),
])
def test_meter_validation_refuses_bad_keys_naming_key_value_and_range(cfg: dict, expect: str) -> None:
    got = mp_json("""
import json
from edge.hal import scripted as hal
from edge.meters import validate
hal.load({"virtual_time": True})
try:
    validate(json.loads(%r))
    out = "accepted"
except ValueError as e:
    out = str(e)
# validate() opens no hardware.
print(json.dumps([out, len(hal._uarts) + len(hal._pins) + len(hal._adcs)]))
""" % json.dumps(cfg))
    msg, opened = got
    assert msg.startswith(expect), msg
    assert opened == 0


def test_meter_validation_accepts_every_documented_config() -> None:
    cfgs = [json.loads(line.split("`")[3]) for line in open(Path(__file__).resolve().parents[2] / "hardware" / "pinmaps.md") if line.startswith("- `") and '{"type"' in line]
    cfgs += [{"type": "simulated", "profile": "prosumer", "seed": 3, "solar_peak_w": 4000, "base_load_w": 300},
             {"type": "ct", "v_pin": 26, "i_pin": 27, "burden_ohm": 22, "v_divider": 11, "mains_hz": 60},
             {"type": "s0", "pin": 34, "pull_up": False, "counter": "irq", "debounce_ms": 30}]
    assert len(cfgs) > 10
    got = mp_json("""
import json
from edge.meters import validate
out = []
for cfg in json.loads(%r):
    try:
        validate(cfg)
        out.append(None)
    except ValueError as e:
        out.append(str(e))
print(json.dumps(out))
""" % json.dumps(cfgs))
    assert got == [None] * len(cfgs)
