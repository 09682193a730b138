# A current transformer (CT clamp) and a voltage transformer on the ADC.
#
# Sampling. A window reads (voltage, current) pairs back to back with the
# ADC's calibrated read_uv() for `cycles` whole mains cycles, timed with
# ticks_us (5 cycles = 100 ms at 50 Hz, 83.3 ms at 60 Hz): however fast
# the board reads, the window spans whole cycles, so the RMS figures do
# not depend on where in the cycle it started (a window of a fixed sample
# count is a whole number of cycles only at one sampling rate). Windows
# are taken at every read() and, through poll(), back to back while the
# firmware is idle (it is, between readings, nearly all the time), so
# the readings cover the interval instead of one window standing for it.
#
# Maths per window, on samples centred on their mean (the bias midpoint):
#   Vrms = sqrt(mean(v^2)), Irms = sqrt(mean(i^2)),
#   P    = mean(v_shifted * i)   real power, signed (+ import, - export),
#   S    = Vrms * Irms, PF = P / S.
# v_shifted = v + (phase_cal - 1) * (v_next - v) moves the voltage in
# time to when the current was sampled (interpolating between this pair's
# voltage and the next one's): the current is read after the voltage, half
# a pair period later with equal conversion times, hence the default
# phase_cal 1.5 (1.0: no shift); a CT/VT's own phase shift adds to it
# (calibrate it with a motor or other lagging load if it matters). The
# sums are small integers of 128 uV units (see _sample): the loop
# allocates nothing, so the garbage collector never pauses it mid-window.
#
# Gains (config, or derived from the documented front end):
#   i_gain = ct_ratio / burden_ohm         A per volt at the ADC pin
#            (SCT-013-000 100 A : 50 mA = 2000, 18 Ohm burden: 111.1 A/V)
#   v_gain = vt_ratio * v_divider          mains V per volt at the ADC pin
#            (9 V AC adapter, 325 V peak -> 15 V peak unloaded: 21.7;
#             180k/10k divider: 19; together 412 V/V)
# On a Pico W or ESP32-C3 (full-range ADC) the documented front end is
# 22 Ohm and 100k/10k: set "burden_ohm": 22, "v_divider": 11.
# `calibrate` sets both gains from a reference load of known power.
#
# Energy. A window's mean of v*i is the energy of its own span divided by
# its length, whatever the load did inside it, so each window books its
# power over its own span; the gap since the previous window (the
# firmware's own work: signing, sending) is booked at the average of the
# two windows either side (the trapezoid rule; a change of sign is split
# where the straight line crosses zero). In integer Wh plus integer mJ,
# timed by the driver's own wrap-safe ticks_ms (never by the reading's
# timestamp). Persisted by the journal through the firmware's readings;
# restore() continues from there.
#
# Accuracy (stated; tests/edge/test_pulse_and_ct_drivers.py holds it):
# with calibrated gains, for sinusoidal loads of 1 A and more (tested to
# 15 A; the documented front end is linear to 63 A RMS), power factors
# down to 0.7 either way, at 50 or 60 Hz and any sampling rate over ~20
# pairs per cycle (tested at 66 to 103, never a whole number): net energy (import - export) within +-1 % of the energy that
# flowed during the windows, which run back to back while the firmware
# idles (nearly all the time). A load step inside a gap between windows
# adds at most |step| x gap / 2 (gaps: the firmware's own work, about
# 0.3 s per reading for signing and sending, and under a millisecond
# between windows; the whole reading interval if poll() is never called).
# Import and export are told apart per window: when the flow reverses
# inside one, it books its net, so each counter may miss up to
# min(|P before|, |P after|) x window length (0.1 s) per reversal.
# Cheap CTs and the ESP32's ADC are unreliable at small currents, so power
# under `accuracy_floor_w` (default 20 W) is flagged.
#
# Config: {"type": "ct", "v_pin": 36, "i_pin": 39, "mains_hz": 50,
#          "cycles": 5, "ct_ratio": 2000, "burden_ohm": 18,
#          "vt_ratio": 21.7, "v_divider": 19, "phase_cal": 1.5,
#          "invert": false, "accuracy_floor_w": 20}
#   and optionally "i_gain", "v_gain" (set by calibration; they override
#   the derived figures). "samples", the fixed sample count of older
#   versions, is accepted and ignored.

import math

from edge import hal
from edge.meters.base import Measurement, Meter, RESET_ENERGY, below_floor, round_to

MIN_CALIBRATION_W = 60
SHIFT = 7  # samples in units of 2^7 uV: +-1.65 V is +-12900, a square 1.7e8
UNIT_V = (1 << SHIFT) / 1000000
MJ_PER_WH = 3600000
MAX_PAIRS = 50000  # a window ends here even if the clock seems stuck

KEYS = ("v_pin", "i_pin", "mains_hz", "cycles", "ct_ratio", "burden_ohm", "vt_ratio", "v_divider", "i_gain",
        "v_gain", "phase_cal", "invert", "accuracy_floor_w", "samples")


def validate(cfg):
    """ValueError naming the key, value and allowed range, or None."""
    from edge.meters import checks  # boot and `config set` only: released after

    checks.known_keys(cfg, KEYS, "ct")
    v_pin = checks.pin(cfg, "v_pin", 36)
    i_pin = checks.pin(cfg, "i_pin", 39)
    if v_pin == i_pin:
        checks.fail("i_pin", i_pin, "a different ADC pin from meter.v_pin")
    checks.number(cfg, "mains_hz", 40, 70, 50)
    checks.integer(cfg, "cycles", 1, 50, 5)
    checks.number(cfg, "ct_ratio", 1, 100000, 2000)
    checks.number(cfg, "burden_ohm", 0.1, 10000, 18)
    checks.number(cfg, "vt_ratio", 1, 1000, 21.7)
    checks.number(cfg, "v_divider", 1, 1000, 19)
    # Gains are per volt at the ADC pin. Older versions had them per
    # read_u16 count (0.0163, 0.00094): those are far below these ranges.
    if "i_gain" in cfg:
        checks.number(cfg, "i_gain", 0.1, 100000, None)
    if "v_gain" in cfg:
        checks.number(cfg, "v_gain", 1, 100000, None)
    checks.number(cfg, "phase_cal", 0.0, 3.0, 1.5)
    checks.flag(cfg, "invert", False)
    checks.number(cfg, "accuracy_floor_w", 0, 100000, 20)
    checks.integer(cfg, "samples", 1, 100000, 400)


class CTMeter(Meter):
    counts_in_host = True

    def __init__(self, cfg):
        validate(cfg)
        self.mains_hz = cfg.get("mains_hz", 50)
        self.cycles = cfg.get("cycles", 5)
        self.window_us = int(self.cycles * 1000000 / self.mains_hz + 0.5)
        self.i_gain = float(cfg.get("i_gain", cfg.get("ct_ratio", 2000) / cfg.get("burden_ohm", 18)))
        self.v_gain = float(cfg.get("v_gain", cfg.get("vt_ratio", 21.7) * cfg.get("v_divider", 19)))
        self.phase_cal = float(cfg.get("phase_cal", 1.5))
        self.sign = -1 if cfg.get("invert", False) else 1
        self.accuracy_floor_w = cfg.get("accuracy_floor_w", 20)
        self.adc_v = hal.adc(cfg.get("v_pin", 36), hal.ATTEN_11DB)
        self.adc_i = hal.adc(cfg.get("i_pin", 39), hal.ATTEN_11DB)
        self.read_v = self.adc_v.read_uv  # bound once: the loop allocates nothing
        self.read_i = self.adc_i.read_uv
        self.acc = [0] * 16  # the window's sums: (2^28s, rest) per sum
        self.ov = None  # bias midpoints in uV: the last window's means
        self.oi = None
        self.last_end = None  # ticks_ms at the end of the last window
        self.last_p = 0.0
        self.last = None  # (vrms, irms, p, pf) of the last window
        self.windows = 0
        self.pairs = 0  # pairs in the last window
        self.imp_wh = self.exp_wh = 0
        self.imp_mj = self.exp_mj = 0
        self.carry = 0.0  # booked mJ below 1, signed
        self.pending_reset = None

    # -- sampling ---------------------------------------------------------

    def _sample(self):
        """One window of whole mains cycles into self.acc; returns the
        number of pairs. Allocates nothing (a test runs it with the heap
        locked): every sum is a small int, split into a high part counting
        2^28 and a low part below 2^28 every 4 pairs, so no float is boxed
        and no long int is made, and the garbage collector never pauses a
        window part-way through a cycle."""
        rv, ri = self.read_v, self.read_i
        ov, oi = self.ov, self.oi
        tick_us, diff = hal.ticks_us, hal.ticks_diff
        win = self.window_us
        # Power pairs each current with the voltage interpolated to its
        # time, between its own pair's voltage and the next one's, so it
        # runs one pair behind: the pair before the window starts it.
        vp = (rv() - ov) >> SHIFT
        ip = (ri() - oi) >> SHIFT
        lv = li = lvv = lii = lpp = lnp = lvp = lip = 0
        hv = hi = hvv = hii = hpp = hnp = hvp = hip = 0
        n = 0
        t0 = tick_us()
        while True:
            v = (rv() - ov) >> SHIFT
            i = (ri() - oi) >> SHIFT
            lv += v
            li += i
            lvv += v * v
            lii += i * i
            lpp += vp * ip
            lnp += v * ip
            lvp += vp
            lip += ip
            vp = v
            ip = i
            n += 1
            if not n & 3:
                hv += lv >> 28
                lv &= 0xFFFFFFF
                hi += li >> 28
                li &= 0xFFFFFFF
                hvv += lvv >> 28
                lvv &= 0xFFFFFFF
                hii += lii >> 28
                lii &= 0xFFFFFFF
                hpp += lpp >> 28
                lpp &= 0xFFFFFFF
                hnp += lnp >> 28
                lnp &= 0xFFFFFFF
                hvp += lvp >> 28
                lvp &= 0xFFFFFFF
                hip += lip >> 28
                lip &= 0xFFFFFFF
            if diff(tick_us(), t0) >= win or n >= MAX_PAIRS:
                break
        acc = self.acc
        acc[0] = hv
        acc[1] = lv
        acc[2] = hi
        acc[3] = li
        acc[4] = hvv
        acc[5] = lvv
        acc[6] = hii
        acc[7] = lii
        acc[8] = hpp
        acc[9] = lpp
        acc[10] = hnp
        acc[11] = lnp
        acc[12] = hvp
        acc[13] = lvp
        acc[14] = hip
        acc[15] = lip
        return n

    def window(self):
        """Sample one window, book its energy, return (Vrms, Irms, P, PF)."""
        if self.ov is None:
            self.ov = self.read_v()
            self.oi = self.read_i()
        start = hal.ticks_ms()
        n = self._sample()
        end = hal.ticks_ms()
        acc = self.acc
        fv, fi, fvv, fii, fpp, fnp, fvp, fip = [acc[k] * 268435456.0 + acc[k + 1] for k in range(0, 16, 2)]
        mv, mi, mvp, mip = fv / n, fi / n, fvp / n, fip / n
        var_v = fvv / n - mv * mv
        var_i = fii / n - mi * mi
        f = self.phase_cal - 1
        cov = (1 - f) * (fpp / n - mvp * mip) + f * (fnp / n - mv * mip)
        kv = UNIT_V * self.v_gain
        ki = UNIT_V * self.i_gain
        vrms = math.sqrt(var_v) * kv if var_v > 0 else 0.0
        irms = math.sqrt(var_i) * ki if var_i > 0 else 0.0
        p = self.sign * cov * kv * ki
        s = vrms * irms
        pf = p / s if s > 0 else 0.0
        if pf > 1.0:
            pf = 1.0
        elif pf < -1.0:
            pf = -1.0
        # Next window's midpoints: this one's means (the shift floors, half
        # a unit low on average).
        self.ov += int((mv + 0.5) * (1 << SHIFT))
        self.oi += int((mi + 0.5) * (1 << SHIFT))
        # The window's own span at its own power: its mean of v*i is the
        # energy of that span over its length, whatever the load did in it.
        # The gap since the last window (the firmware's own work) at the
        # average of the two windows either side.
        if self.last_end is not None:
            self._book(self.last_p, p, hal.ticks_diff(start, self.last_end))
        self._book(p, p, hal.ticks_diff(end, start))
        self.last_end = end
        self.last_p = p
        self.last = (vrms, irms, p, pf)
        self.windows += 1
        self.pairs = n
        return self.last

    def measure(self):
        """(Vrms, Irms, real power W, power factor) from one window."""
        return self.window()

    def poll(self, budget_ms=0):
        """Sample whole windows back to back through `budget_ms` (the
        firmware's idle time), starting one more while at least half of it
        fits (so the firmware may resume up to half a window late: the
        gaps stay small); returns the ms spent."""
        half_ms = self.window_us // 2000 + 1
        start = hal.ticks_ms()
        spent = 0
        most = budget_ms // half_ms  # a bound even if the clock misbehaved
        while spent + half_ms <= budget_ms and most > 0:
            self.window()
            most -= 1
            spent = hal.ticks_diff(hal.ticks_ms(), start)
        return spent if spent > 0 else 0

    # -- energy -----------------------------------------------------------

    def _book(self, p0, p1, dt_ms):
        if dt_ms <= 0:
            return
        if (p0 >= 0) == (p1 >= 0):
            self._add((p0 + p1) * dt_ms / 2)
            return
        f = p0 / (p0 - p1)  # where the straight line crosses zero
        self._add(p0 * f * dt_ms / 2)
        self._add(p1 * (1 - f) * dt_ms / 2)

    def _add(self, mj):
        # Whole mJ into the integer counters; the fraction carries over.
        mj += self.carry
        whole = int(mj)
        self.carry = mj - whole
        if whole > 0:
            self.imp_mj += whole
            if self.imp_mj >= MJ_PER_WH:
                self.imp_wh += self.imp_mj // MJ_PER_WH
                self.imp_mj %= MJ_PER_WH
        elif whole < 0:
            self.exp_mj -= whole
            if self.exp_mj >= MJ_PER_WH:
                self.exp_wh += self.exp_mj // MJ_PER_WH
                self.exp_mj %= MJ_PER_WH

    def energy_mj(self):
        """(import, export) booked so far in mJ, finer than the readings'
        Wh (for tests and the console)."""
        return self.imp_wh * MJ_PER_WH + self.imp_mj, self.exp_wh * MJ_PER_WH + self.exp_mj

    def restore(self, import_wh, export_wh):
        self.imp_wh, self.exp_wh = import_wh, export_wh
        self.imp_mj = self.exp_mj = 0

    def read(self, t_ms):
        vrms, irms, p, pf = self.window()
        reset, self.pending_reset = self.pending_reset, None
        return Measurement(self.imp_wh, self.exp_wh, round_to(p, 1), round_to(vrms, 1), round_to(irms, 3), None,
                           below_floor(p, self.accuracy_floor_w), round_to(pf, 3), reset)

    def reset_energy(self, reason=RESET_ENERGY):
        self.pending_reset = (reason, self.imp_wh, self.exp_wh)
        self.imp_wh = self.exp_wh = self.imp_mj = self.exp_mj = 0

    # -- calibration ------------------------------------------------------

    def calibrate(self, ref_power_w, ref_voltage_v=None):
        """Gains from a resistive reference load of known power (a kettle, a
        heater, measured with a trusted meter). Returns the new settings."""
        if ref_power_w < MIN_CALIBRATION_W:
            raise ValueError("reference load %s W is too small to calibrate against: use at least %d W "
                             "(below that the CT's error and ADC noise dominate)" % (ref_power_w, MIN_CALIBRATION_W))
        if ref_voltage_v is not None and not 50 <= ref_voltage_v <= 500:
            raise ValueError("reference voltage %s V: expected 50..500 V" % (ref_voltage_v,))
        vrms, irms, p, pf = self.measure()
        if abs(p) < MIN_CALIBRATION_W * 0.1:
            raise ValueError("measured only %.1f W with the reference load on: check the CT is clamped on the "
                             "live wire and the load is switched on" % p)
        if abs(pf) < 0.8:
            raise ValueError("measured power factor %.2f: calibrate with a resistive load (kettle, heater), "
                             "or fix phase_cal first" % pf)
        if ref_voltage_v is not None:
            if vrms < 10:
                raise ValueError("measured %.1f V: check the voltage transformer" % vrms)
            self.v_gain *= ref_voltage_v / vrms
            p *= ref_voltage_v / vrms
        self.i_gain *= ref_power_w / abs(p)
        return {"v_gain": self.v_gain, "i_gain": self.i_gain}
