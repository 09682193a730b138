# A simulated meter driven by a deterministic profile, for demos and tests.
#
# Power follows the time of day of the (possibly accelerated) clock: rooftop
# solar is a half-sine between sunrise and sunset with seeded cloud dips, a
# household load has a base plus morning and evening peaks with seeded
# noise. The same seed and times give the same readings on every run.
# Energy integrates power exactly in integer microjoules, so counters never
# drift or go backwards. The "constant" profile draws `power_w` (negative:
# exports) at every instant: a scripted load whose energy is known exactly.
# Times are integer Unix ms (read) and whole seconds (profiles).

from edge.meters.base import Measurement, Meter, RESET_ENERGY
from edge.meters.energy import EnergyIntegrator

PROFILES = ("household", "solar", "load", "prosumer", "constant")


def _noise(seed, slot):
    # Small integer hash (xorshift) mapped to 0..999: deterministic noise
    # without the random module's per-port differences.
    x = (seed * 2654435761 + slot * 40503 + 12345) & 0xFFFFFFFF
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    return x % 1000


def _solar_w(peak_w, seed, t):
    day_s = t % 86400
    hour = day_s / 3600.0
    if hour < 6 or hour > 20:
        return 0
    # Triangle-ish bell without math.sin: 1 - ((h - 13) / 7)^2, clipped.
    x = (hour - 13.0) / 7.0
    shape = 1.0 - x * x
    if shape <= 0:
        return 0
    cloud = _noise(seed, t // 600)
    dip = 1.0 if cloud > 300 else 0.4 + cloud / 500.0
    return int(peak_w * shape * dip)


def _load_w(base_w, seed, t):
    hour = (t % 86400) / 3600.0
    w = base_w
    if 6.5 <= hour < 9:
        w += base_w * 3
    elif 17 <= hour < 22:
        w += base_w * 5
    w += base_w * _noise(seed + 7, t // 300) // 1000
    return int(w)


class SimulatedMeter(Meter):
    counts_in_host = True

    def __init__(self, cfg):
        profile = cfg.get("profile", "household")
        if profile not in PROFILES:
            raise ValueError("simulated meter profile %r: expected one of %s" % (profile, ", ".join(PROFILES)))
        self.profile = profile
        self.seed = int(cfg.get("seed", 1))
        self.peak_w = int(cfg.get("solar_peak_w", 4000 if profile in ("solar", "prosumer") else 0))
        self.base_w = int(cfg.get("base_load_w", 0 if profile == "solar" else 300))
        self.voltage_v = float(cfg.get("voltage_v", 230.0))
        self.constant_w = cfg.get("power_w", 1000)
        if isinstance(self.constant_w, bool) or not isinstance(self.constant_w, (int, float)):
            raise ValueError("simulated meter power_w %r: expected a number of W" % (self.constant_w,))
        self.energy = EnergyIntegrator()

    def restore(self, import_wh, export_wh):
        self.energy.restore(import_wh, export_wh)

    def power_at(self, t):
        """Net power in W at Unix second t: positive import, negative export."""
        if self.profile == "constant":
            return self.constant_w
        load = _load_w(self.base_w, self.seed, t) if self.base_w else 0
        solar = _solar_w(self.peak_w, self.seed, t) if self.peak_w else 0
        return load - solar

    def read(self, t_ms):
        t = t_ms // 1000
        power = self.power_at(t)
        self.energy.add(power, t_ms)  # power held over the interval since the last reading
        volt = self.voltage_v
        if self.profile != "constant":
            volt = int((volt + (_noise(self.seed + 3, t // 60) - 500) / 250.0) * 10 + 0.5) / 10
        imp, exp = self.energy.wh()
        return Measurement(imp, exp, power, volt, None, None, 0, None, self.energy.take_reset())

    def reset_energy(self, reason=RESET_ENERGY):
        self.energy.reset(reason)
