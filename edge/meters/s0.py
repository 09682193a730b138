# S0 pulse output (IEC 62053-31), counted in hardware where the board can.
#
# An S0 output closes an opto switch for each unit of energy: `impulses
# per kWh` (printed on the meter: 1000, 800, 2000 ...). A pulse lasts at
# least 30 ms and the pause after it at least 30 ms (IEC 62053-31), so at
# most 16.7 pulses per second. The count lives in the host: the journal
# persists it as Wh and restore() continues from there (less than one
# pulse is lost at a restart).
#
# Counting (`counter`):
#   "pcnt"  the ESP32's pulse counter unit counts the pulse ends (rising
#           edges) in hardware: nothing is lost however long Python is
#           busy (a flash erase, a signature, a garbage collection). Its
#           glitch filter drops pulses under `glitch_ns` (at most 12.8 us);
#           with the documented 1 kOhm + 100 nF input filter that is all an
#           opto output needs. It cannot time out millisecond contact
#           bounce: a meter with a mechanical (reed) contact needs "irq".
#           The classic ESP32's counter is 16-bit: the driver sets its
#           limit to PCNT_LIMIT (32767), where it returns to 0, and folds
#           it into the host total at every poll() and read(), so 32766
#           pulses may arrive between two polls: 32 minutes at the S0
#           maximum of 16.7 pulses/s. The firmware polls every second.
#   "irq"   a hard pin interrupt on both edges: the handler runs at the
#           edge even while Python is busy, takes the edge's time there,
#           and counts a pulse when the line comes back up after being low
#           for at least `debounce_ms` (contact bounce and glitches never
#           stay low that long). It allocates nothing (a hard IRQ must
#           not): its state is a preallocated list of small ints, the count
#           wrapping at 2^30. On a port without hard IRQs it falls back to
#           a soft one, which MicroPython runs later, when Python is free:
#           a long stall then loses pulses (see `hard`).
#           Exception: during a flash erase an ESP32 defers GPIO
#           interrupts; a whole pulse inside one erase is seen as none.
#   "auto"  (default) "pcnt" where the board has esp32.PCNT, else "irq".
#
# Power comes from the time between the last two pulses, taken at their
# edges by the pin interrupt (attached with either counter); when the
# meter has been silent for longer than that, the power is at most one
# pulse over the silence, so the smaller figure is reported. With fewer
# than two pulses seen, or power under `accuracy_floor_w`, the reading is
# flagged: at 1000 imp/kWh a 5 W load gives one pulse every 12 minutes.
#
# Config: {"type": "s0", "pin": 4, "impulses_per_kwh": 1000,
#          "counter": "auto", "pcnt_unit": 0, "glitch_ns": 12700,
#          "debounce_ms": 20, "direction": "import", "pull_up": true,
#          "voltage_v": 0, "accuracy_floor_w": 0}

from edge import hal
from edge.meters.base import FLAG_BELOW_ACCURACY, Measurement, Meter, RESET_ENERGY, below_floor

PCNT_LIMIT = 32767
MASK30 = 0x3FFFFFFF

KEYS = ("pin", "impulses_per_kwh", "counter", "pcnt_unit", "glitch_ns", "debounce_ms", "direction", "pull_up",
        "voltage_v", "accuracy_floor_w")

# Slots of the IRQ handler's state list.
_PULSES = 0  # debounced pulses, modulo 2^30
_BOUNCES = 1  # low spells shorter than debounce_ms
_LOW = 2  # 1 while the line is low
_FALL = 3  # ticks_ms of the last falling edge
_LAST = 4  # ticks_ms of the last counted pulse's start
_SPAN = 5  # ms between the last two counted pulses
_SEEN = 6  # 0, 1, 2: counted pulses seen (saturating)


def validate(cfg):
    """ValueError naming the key, value and allowed range, or None."""
    from edge.meters import checks  # boot and `config set` only: released after

    checks.known_keys(cfg, KEYS, "s0")
    checks.pin(cfg, "pin", 4)
    checks.integer(cfg, "impulses_per_kwh", 1, 100000, 1000)
    checks.one_of(cfg, "counter", ("auto", "pcnt", "irq"), "auto")
    checks.integer(cfg, "pcnt_unit", 0, 7, 0)
    checks.integer(cfg, "glitch_ns", 0, 12787, 12700)
    checks.integer(cfg, "debounce_ms", 0, 1000, 20)
    checks.one_of(cfg, "direction", ("import", "export"), "import")
    checks.flag(cfg, "pull_up", True)
    checks.number(cfg, "voltage_v", 0, 1000, 0)
    checks.number(cfg, "accuracy_floor_w", 0, 100000, 0)


class S0Meter(Meter):
    counts_in_host = True

    def __init__(self, cfg):
        validate(cfg)
        self.imp_per_kwh = cfg.get("impulses_per_kwh", 1000)
        self.debounce_ms = cfg.get("debounce_ms", 20)
        self.direction = cfg.get("direction", "import")
        self.voltage_v = cfg.get("voltage_v", 0.0)
        self.accuracy_floor_w = cfg.get("accuracy_floor_w", 0)
        self.base_wh = 0
        self.other_wh = 0
        self.pending_reset = None
        self.total = 0  # pulses counted since boot (host int, unbounded)
        pin_id = cfg.get("pin", 4)
        pull = hal.PULL_UP if cfg.get("pull_up", True) else None
        self.pin = hal.pin(pin_id, hal.PIN_IN, pull)
        # Preallocated before the IRQ is attached: the handler only stores
        # small ints into it.
        self.st = [0, 0, 0, 0, 0, 0, 0]
        self.hard = hal.pin_irq(self.pin, self._edge, hal.IRQ_FALLING | hal.IRQ_RISING)
        counter = cfg.get("counter", "auto")
        self.pcnt = None
        if counter != "irq":
            self.pcnt = hal.pcnt(pin_id, cfg.get("pcnt_unit", 0), True, cfg.get("glitch_ns", 12700), PCNT_LIMIT)
            if self.pcnt is None and counter == "pcnt":
                raise ValueError("config meter.counter='pcnt': this board has no hardware pulse counter "
                                 "(esp32.PCNT); use \"auto\" or \"irq\"")
        self.counter = "pcnt" if self.pcnt is not None else "irq"
        self.seen_hw = self.pcnt.value() if self.pcnt is not None else 0
        self.seen_irq = 0

    def _edge(self, pin):
        # Hard IRQ handler: no allocation, small ints only.
        st = self.st
        now = hal.ticks_ms()
        if pin.value() == 0:
            if not st[_LOW]:
                st[_LOW] = 1
                st[_FALL] = now
            return
        if not st[_LOW]:
            return
        st[_LOW] = 0
        if hal.ticks_diff(now, st[_FALL]) < self.debounce_ms:
            st[_BOUNCES] = (st[_BOUNCES] + 1) & MASK30
            return
        if st[_SEEN]:
            st[_SPAN] = hal.ticks_diff(st[_FALL], st[_LAST])
            st[_SEEN] = 2
        else:
            st[_SEEN] = 1
        st[_LAST] = st[_FALL]
        st[_PULSES] = (st[_PULSES] + 1) & MASK30

    @property
    def pulses(self):
        """Pulses the pin interrupt counted (debounced), since boot."""
        return self.st[_PULSES]

    @property
    def bounces(self):
        return self.st[_BOUNCES]

    def _snapshot(self):
        state = hal.irq_off()
        st = self.st
        pulses, last_ms, span_ms, seen = st[_PULSES], st[_LAST], st[_SPAN], st[_SEEN]
        hal.irq_on(state)
        return pulses, last_ms, span_ms, seen

    def _fold(self):
        """Add the pulses counted since the last call to the host total."""
        if self.pcnt is not None:
            v = self.pcnt.value()
            self.total += (v - self.seen_hw) % PCNT_LIMIT
            self.seen_hw = v
        else:
            p = self._snapshot()[0]
            self.total += (p - self.seen_irq) & MASK30
            self.seen_irq = p

    def poll(self, budget_ms=0):
        """Called by the firmware on every pass of its loop: keeps the
        16-bit hardware counter from wrapping unseen. Spends no time."""
        self._fold()
        return 0

    def restore(self, import_wh, export_wh):
        self.base_wh = import_wh if self.direction == "import" else export_wh
        self.other_wh = export_wh if self.direction == "import" else import_wh

    def counted_wh(self, pulses):
        return self.base_wh + pulses * 1000 // self.imp_per_kwh

    def read(self, t_ms):
        self._fold()
        wh = self.counted_wh(self.total)
        _, last_ms, span_ms, seen = self._snapshot()
        watts = 0.0
        flags = 0
        if seen == 2 and span_ms > 0:
            since = hal.ticks_diff(hal.ticks_ms(), last_ms)
            span = span_ms if since <= span_ms else since
            watts = 3600000000 / (self.imp_per_kwh * span)
            watts = int(watts * 10 + 0.5) / 10
        else:
            flags = FLAG_BELOW_ACCURACY
        flags |= below_floor(watts, self.accuracy_floor_w)
        reset, self.pending_reset = self.pending_reset, None
        if self.direction == "import":
            return Measurement(wh, self.other_wh, watts, self.voltage_v, None, None, flags, None, reset)
        return Measurement(self.other_wh, wh, -watts, self.voltage_v, None, None, flags, None, reset)

    def reset_energy(self, reason=RESET_ENERGY):
        self._fold()
        wh = self.counted_wh(self.total)
        old = (wh, self.other_wh) if self.direction == "import" else (self.other_wh, wh)
        # New counters start at zero from the current pulse count.
        self.base_wh = -(self.total * 1000 // self.imp_per_kwh)
        self.other_wh = 0
        self.pending_reset = (reason, old[0], old[1])
