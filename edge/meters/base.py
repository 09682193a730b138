# The one interface every meter driver implements.
#
# A driver's read(t) returns a Measurement: cumulative energy as integer Wh
# (import = drawn from the grid, export = fed into it), signed power in W
# (positive import, negative export) and voltage in V. Optional values are
# None when the hardware does not give them. `flags` carries conditions a
# reader must see, such as a power under the driver's accuracy floor.

FLAG_BELOW_ACCURACY = 1


class Measurement:
    __slots__ = ("import_wh", "export_wh", "power_w", "voltage_v", "current_a", "frequency_hz", "flags")

    def __init__(self, import_wh, export_wh, power_w, voltage_v, current_a=None, frequency_hz=None, flags=0):
        self.import_wh = import_wh
        self.export_wh = export_wh
        self.power_w = power_w
        self.voltage_v = voltage_v
        self.current_a = current_a
        self.frequency_hz = frequency_hz
        self.flags = flags

    def extra_records(self):
        """Optional SenML records (name, unit, value) for the reading."""
        out = []
        if self.current_a is not None:
            out.append(("current", "A", self.current_a))
        if self.frequency_hz is not None:
            out.append(("frequency", "Hz", self.frequency_hz))
        if self.flags:
            out.append(("flags", None, self.flags))
        return out


class Meter:
    """Base class: drivers override read()."""

    def read(self, t):
        raise NotImplementedError

    def restore(self, import_wh, export_wh):
        """Continue cumulative counters from persisted totals (drivers that
        keep energy in the host rather than in the meter chip)."""
        pass
