# The one interface every meter driver implements.
#
# A driver's read(t_ms) returns a Measurement: cumulative energy as integer Wh
# (import = drawn from the grid, export = fed into it), signed power in W
# (positive import, negative export) and voltage in V. Optional values are
# None when the hardware does not give them. `flags` carries conditions a
# reader must see, such as a power under the driver's accuracy floor.
#
# A counter reset (the meter's own energy reset, a swapped meter, a
# factory reset) is evidence, not a gap: the Measurement that first shows
# the new counters carries `reset = (reason, old_import_wh, old_export_wh)`
# and the reading gets these extra SenML records:
#   reset            (no unit) text: factory_reset | energy_reset | counter_dropped
#   reset_import_wh  Wh  the import total just before the reset
#   reset_export_wh  Wh  the export total just before the reset
# Energy across the reset is (reset_import_wh - previous reading's import)
# + this reading's import, and the same for export.
#
# t_ms is Unix time in integer milliseconds (edge/clock.py), never a float:
# on a board's single-precision floats Unix seconds move in 128 s steps.
# When the clock is set or stepped, clock_moved(offset_ms) tells the driver
# so that time it integrates over stays the time that really passed.

FLAG_BELOW_ACCURACY = 1  # |power| under the driver's accuracy floor
FLAG_METER_ALARM = 2  # the meter raised its own alarm (PZEM power alarm)
FLAG_TIME_UNSET = 4  # taken before the board knew the time (no SNTP or coordinator time yet)
FLAG_TIME_STEPPED = 8  # the clock stepped since the last reading, or this timestamp is held at the last + 1 s

RESET_FACTORY = "factory_reset"
RESET_ENERGY = "energy_reset"
RESET_DROPPED = "counter_dropped"


class MeterError(OSError):
    """A read failed (no answer, corrupt frame, exception reply). The
    firmware counts it, shows it in `status` and retries with backoff."""


class Measurement:
    __slots__ = ("import_wh", "export_wh", "power_w", "voltage_v", "current_a", "frequency_hz", "flags",
                 "power_factor", "reset")

    def __init__(self, import_wh, export_wh, power_w, voltage_v, current_a=None, frequency_hz=None, flags=0,
                 power_factor=None, reset=None):
        self.import_wh = import_wh
        self.export_wh = export_wh
        self.power_w = power_w
        self.voltage_v = voltage_v
        self.current_a = current_a
        self.frequency_hz = frequency_hz
        self.flags = flags
        self.power_factor = power_factor
        self.reset = reset

    def extra_records(self):
        """Optional SenML records (name, unit, value) for the reading."""
        out = []
        if self.current_a is not None:
            out.append(("current", "A", self.current_a))
        if self.frequency_hz is not None:
            out.append(("frequency", "Hz", self.frequency_hz))
        if self.power_factor is not None:
            out.append(("power_factor", None, self.power_factor))
        if self.flags:
            out.append(("flags", None, self.flags))
        if self.reset is not None:
            reason, old_import, old_export = self.reset
            out.append(("reset", None, reason))
            out.append(("reset_import_wh", "Wh", old_import))
            out.append(("reset_export_wh", "Wh", old_export))
        return out


def below_floor(power_w, floor_w):
    """FLAG_BELOW_ACCURACY when |power| is under the floor (0 = no floor)."""
    if floor_w and -floor_w < power_w < floor_w:
        return FLAG_BELOW_ACCURACY
    return 0


def round_to(x, digits):
    if x is None:
        return None
    f = 10 ** digits
    return int(x * f + (0.5 if x >= 0 else -0.5)) / f


class Meter:
    """Base class: drivers override read(); the rest has defaults."""

    # Drivers that count energy in the host (pulses, ADC) continue from the
    # journal; drivers whose meter keeps the counters only compare.
    counts_in_host = False
    accuracy_floor_w = 0

    def read(self, t_ms):
        """A Measurement taken now; t_ms is Unix time in integer ms."""
        raise NotImplementedError

    def clock_moved(self, offset_ms):
        """The firmware's clock was set or stepped by offset_ms. A driver
        integrating power over t_ms (an `energy` EnergyIntegrator, edge/meters/energy.py) shifts
        its last time so a clock step books no energy."""
        energy = getattr(self, "energy", None)
        if energy is not None:
            energy.shift(offset_ms)

    def restore(self, import_wh, export_wh):
        """The last totals the firmware reported before this boot: host
        counters continue from them; meter-kept counters are compared with
        them so a meter swapped or reset while the board was off shows up."""
        self.last_import = import_wh
        self.last_export = export_wh

    def reset_energy(self, reason=RESET_ENERGY):
        """Zero the energy counters; the next Measurement carries the reset
        record with the old totals. Raises MeterError if the meter cannot."""
        raise MeterError("this meter cannot reset its energy counters")

    def calibrate(self, ref_power_w, ref_voltage_v=None):
        """New calibration settings (a dict for the meter config) from a
        reference load; raises ValueError saying why it cannot."""
        raise ValueError("this meter is calibrated by its maker and takes no calibration")

    def check_counters(self, import_wh, export_wh):
        """For meter-kept counters: a reset record if the counters fell
        below the last totals seen (meter reset or swapped), else None."""
        last_i = getattr(self, "last_import", None)
        last_e = getattr(self, "last_export", None)
        reset = None
        if last_i is not None and (import_wh < last_i or export_wh < last_e):
            reason = getattr(self, "pending_reason", None) or RESET_DROPPED
            reset = (reason, last_i, last_e)
            self.pending_reason = None
        self.last_import = import_wh
        self.last_export = export_wh
        return reset

    def close(self):
        pass

    def poll(self, budget_ms=0):
        """The firmware has `budget_ms` with nothing to do: a driver that
        samples (CT) or must read a hardware counter before it wraps (S0)
        works here and returns the ms it spent (0: the firmware sleeps)."""
        return 0
