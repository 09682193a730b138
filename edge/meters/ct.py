# A current transformer (CT clamp) and a voltage transformer on the ADC.
#
# Each read samples `samples` pairs (voltage, current) back to back. Both
# channels are centred on their mean (the bias divider's midpoint), scaled
# by the calibration gains (V and A per ADC count), and then:
#   Vrms = sqrt(mean(v^2)), Irms = sqrt(mean(i^2)),
#   P    = mean(v_shifted * i)   real power, signed (+ import, - export),
#   S    = Vrms * Irms, PF = P / S.
# Phase correction: the current sample of a pair is taken a little after
# its voltage sample and the CT/VT add their own phase shift, so the
# voltage is moved in time by interpolating between consecutive samples,
#   v_shifted = v_prev + phase_cal * (v - v_prev)
# (phase_cal 1.0 = no shift; 1 + delay/pair-period cancels the sampling
# delay). Sample whole mains cycles (`samples` = pairs per read) so the
# RMS figures do not depend on where in the cycle sampling started.
#
# Energy is integrated in the host (power held since the last read) and
# persisted by the journal. Cheap CTs are unreliable at small currents,
# so power under `accuracy_floor_w` (default 20 W) is flagged. `calibrate`
# sets the gains from a reference load of known power (and voltage).
#
# Config: {"type": "ct", "v_pin": 36, "i_pin": 39, "samples": 400,
#          "v_gain": 0.0163, "i_gain": 0.00094, "phase_cal": 1.0,
#          "invert": false, "accuracy_floor_w": 20}

import math

from edge import hal
from edge.meters.base import EnergyIntegrator, Measurement, Meter, RESET_ENERGY, below_floor, round_to

MIN_CALIBRATION_W = 60


class CTMeter(Meter):
    counts_in_host = True

    def __init__(self, cfg):
        self.samples = cfg.get("samples", 400)
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or not 16 <= self.samples <= 4000:
            raise ValueError("ct samples %r: expected an integer in 16..4000" % (self.samples,))
        self.v_gain = float(cfg.get("v_gain", 0.0163))
        self.i_gain = float(cfg.get("i_gain", 0.00094))
        self.phase_cal = float(cfg.get("phase_cal", 1.0))
        if not 0.0 <= self.phase_cal <= 3.0:
            raise ValueError("ct phase_cal %r: expected 0.0..3.0" % (self.phase_cal,))
        self.sign = -1 if cfg.get("invert", False) else 1
        self.accuracy_floor_w = cfg.get("accuracy_floor_w", 20)
        self.adc_v = hal.adc(cfg.get("v_pin", 36), hal.ATTEN_11DB)
        self.adc_i = hal.adc(cfg.get("i_pin", 39), hal.ATTEN_11DB)
        import array

        self.raw_v = array.array("H", bytes(2 * self.samples))
        self.raw_i = array.array("H", bytes(2 * self.samples))
        self.energy = EnergyIntegrator()

    def restore(self, import_wh, export_wh):
        self.energy.restore(import_wh, export_wh)

    def sample(self):
        rv, ri, av, ai = self.raw_v, self.raw_i, self.adc_v, self.adc_i
        for k in range(self.samples):
            rv[k] = av.read_u16()
            ri[k] = ai.read_u16()

    def measure(self):
        """(Vrms, Irms, real power W, power factor) from one sample run."""
        self.sample()
        n = self.samples
        rv, ri = self.raw_v, self.raw_i
        mv = sum(rv) / n
        mi = sum(ri) / n
        gv, gi, pc = self.v_gain, self.i_gain, self.phase_cal
        sv = si = sp = 0.0
        v_prev = (rv[n - 1] - mv) * gv
        for k in range(n):
            v = (rv[k] - mv) * gv
            i = (ri[k] - mi) * gi
            vs = v_prev + pc * (v - v_prev)
            sv += v * v
            si += i * i
            sp += vs * i
            v_prev = v
        vrms = math.sqrt(sv / n)
        irms = math.sqrt(si / n)
        p = self.sign * sp / n
        s = vrms * irms
        pf = p / s if s > 0 else 0.0
        if pf > 1.0:
            pf = 1.0
        elif pf < -1.0:
            pf = -1.0
        return vrms, irms, p, pf

    def read(self, t_ms):
        vrms, irms, p, pf = self.measure()
        self.energy.add(p, t_ms)
        imp, exp = self.energy.wh()
        return Measurement(imp, exp, round_to(p, 1), round_to(vrms, 1), round_to(irms, 3), None,
                           below_floor(p, self.accuracy_floor_w), round_to(pf, 3), self.energy.take_reset())

    def reset_energy(self, reason=RESET_ENERGY):
        self.energy.reset(reason)

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
