# S0 pulse output (IEC 62053-31), counted by a pin interrupt.
#
# An S0 output closes an opto switch for each unit of energy: `impulses
# per kWh` (printed on the meter: 1000, 800, 2000 ...). A pulse lasts at
# least 30 ms (IEC 62053-31 class A), so edges closer than `debounce_ms`
# (default 20 ms) to the last counted one are contact or cable bounce and
# are ignored. The count lives in the host: the journal persists it as Wh
# and restore() continues from there (less than one pulse is lost).
#
# Power comes from the time between the last two pulses; when the meter
# has been silent for longer than that, the power is at most one pulse
# over the silence, so the smaller figure is reported. With fewer than two
# pulses seen, or power under `accuracy_floor_w`, the reading is flagged:
# at 1000 imp/kWh a 5 W load gives one pulse every 12 minutes.
#
# Config: {"type": "s0", "pin": 4, "impulses_per_kwh": 1000,
#          "debounce_ms": 20, "direction": "import", "pull_up": true,
#          "accuracy_floor_w": 0}

from edge import hal
from edge.meters.base import FLAG_BELOW_ACCURACY, Measurement, Meter, RESET_ENERGY, below_floor


class S0Meter(Meter):
    counts_in_host = True

    def __init__(self, cfg):
        self.imp_per_kwh = cfg.get("impulses_per_kwh", 1000)
        if isinstance(self.imp_per_kwh, bool) or not isinstance(self.imp_per_kwh, int) or not 1 <= self.imp_per_kwh <= 100000:
            raise ValueError("s0 impulses_per_kwh %r: expected an integer in 1..100000" % (self.imp_per_kwh,))
        self.debounce_ms = cfg.get("debounce_ms", 20)
        if not 0 <= self.debounce_ms <= 1000:
            raise ValueError("s0 debounce_ms %r: expected 0..1000" % (self.debounce_ms,))
        self.direction = cfg.get("direction", "import")
        if self.direction not in ("import", "export"):
            raise ValueError("s0 direction %r: expected import or export" % (self.direction,))
        self.voltage_v = cfg.get("voltage_v", 0.0)
        self.accuracy_floor_w = cfg.get("accuracy_floor_w", 0)
        # Counted in the IRQ handler: plain ints, no allocation there.
        self.pulses = 0
        self.bounces = 0
        self.last_ms = 0
        self.interval_ms = 0
        self.seen = 0
        self.low = 0
        self.fall_ms = 0
        self.base_wh = 0
        self.pending_reset = None
        pull = hal.PULL_UP if cfg.get("pull_up", True) else None
        self.pin = hal.pin(cfg.get("pin", 4), hal.PIN_IN, pull)
        self.pin.irq(self._edge, hal.IRQ_FALLING | hal.IRQ_RISING)

    def _edge(self, pin):
        # Both edges: a pulse counts when the line comes back up after
        # being low for at least debounce_ms. Contact bounce (short low
        # spikes at either edge) and glitches never stay low that long.
        now = hal.ticks_ms()
        if pin.value() == 0:
            if not self.low:
                self.low = 1
                self.fall_ms = now
            return
        if not self.low:
            return
        self.low = 0
        if hal.ticks_diff(now, self.fall_ms) < self.debounce_ms:
            self.bounces += 1
            return
        if self.seen:
            self.interval_ms = hal.ticks_diff(self.fall_ms, self.last_ms)
        self.last_ms = self.fall_ms
        self.seen = 1 if not self.seen else 2
        self.pulses += 1

    def restore(self, import_wh, export_wh):
        self.base_wh = import_wh if self.direction == "import" else export_wh
        self.other_wh = export_wh if self.direction == "import" else import_wh

    def _snapshot(self):
        state = hal.irq_off()
        pulses, last_ms, interval_ms, seen = self.pulses, self.last_ms, self.interval_ms, self.seen
        hal.irq_on(state)
        return pulses, last_ms, interval_ms, seen

    def counted_wh(self, pulses):
        return self.base_wh + pulses * 1000 // self.imp_per_kwh

    def read(self, t_ms):
        pulses, last_ms, interval_ms, seen = self._snapshot()
        wh = self.counted_wh(pulses)
        watts = 0.0
        flags = 0
        if seen == 2 and interval_ms > 0:
            since = hal.ticks_diff(hal.ticks_ms(), last_ms)
            span = interval_ms if since <= interval_ms else since
            watts = 3600000000 / (self.imp_per_kwh * span)
            watts = int(watts * 10 + 0.5) / 10
        else:
            flags = FLAG_BELOW_ACCURACY
        flags |= below_floor(watts, self.accuracy_floor_w)
        other = getattr(self, "other_wh", 0)
        reset, self.pending_reset = self.pending_reset, None
        if self.direction == "import":
            return Measurement(wh, other, watts, self.voltage_v, None, None, flags, None, reset)
        return Measurement(other, wh, -watts, self.voltage_v, None, None, flags, None, reset)

    def reset_energy(self, reason=RESET_ENERGY):
        pulses = self._snapshot()[0]
        wh = self.counted_wh(pulses)
        other = getattr(self, "other_wh", 0)
        old = (wh, other) if self.direction == "import" else (other, wh)
        # New counters start at zero from the current pulse count.
        self.base_wh = -(pulses * 1000 // self.imp_per_kwh)
        self.other_wh = 0
        self.pending_reset = (reason, old[0], old[1])
