# Energy summed from power over time, for the drivers that measure power
# themselves (CT clamp, simulated). In its own module so that a board with
# a meter that keeps its own counters (PZEM, Eastron) does not hold the
# class in its heap.

class EnergyIntegrator:
    """Power held over time, summed exactly into cumulative Wh (in integer
    microjoules: milliwatts times milliseconds, so counters never drift or
    go backwards). For drivers that measure power themselves (CT clamp,
    simulated) rather than read energy registers from the meter chip."""

    UJ_PER_WH = 3600000000

    def __init__(self):
        self.import_uj = 0
        self.export_uj = 0
        self.last_t = None  # Unix ms of the last call
        self.pending_reset = None

    def restore(self, import_wh, export_wh):
        self.import_uj = import_wh * self.UJ_PER_WH
        self.export_uj = export_wh * self.UJ_PER_WH

    def add(self, power_w, t_ms):
        """Book `power_w` (+ import, - export) from the last call up to
        t_ms (integer Unix ms). Power is taken to the milliwatt; the product
        with integer ms is exact."""
        last = self.last_t
        if last is not None and t_ms > last:
            ms = t_ms - last
            if power_w >= 0:
                self.import_uj += int(power_w * 1000 + 0.5) * ms
            else:
                self.export_uj += int(-power_w * 1000 + 0.5) * ms
        self.last_t = t_ms

    def shift(self, offset_ms):
        """The clock moved by offset_ms: the next add() books only the time
        that really passed since the last one."""
        if self.last_t is not None:
            self.last_t += offset_ms

    def wh(self):
        return self.import_uj // self.UJ_PER_WH, self.export_uj // self.UJ_PER_WH

    def reset(self, reason):
        """Zero the counters, keeping the old totals for the next reading's
        reset record."""
        imp, exp = self.wh()
        self.pending_reset = (reason, imp, exp)
        self.import_uj = 0
        self.export_uj = 0

    def take_reset(self):
        reset, self.pending_reset = self.pending_reset, None
        return reset
