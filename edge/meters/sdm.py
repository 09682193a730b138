# Eastron SDM120 (single phase) and SDM630 (three phase) on RS-485,
# Modbus-RTU (default 2400 baud 8N1 on SDM120, 9600 on SDM630-Modbus V2;
# set `uart.baud` to the meter's setting). Values are IEEE-754 floats in
# pairs of input registers (function 0x04), high word first.
#
#   SDM120                         SDM630
#   0x0000 voltage V               0x002A average line-to-neutral V
#   0x0006 current A               0x0030 sum of line currents A
#   0x000C active power W          0x0034 total system power W
#   0x001E power factor            0x003E total system power factor
#   0x0046 frequency Hz            0x0046 frequency Hz
#   0x0048 import active kWh       0x0048 import kWh
#   0x004A export active kWh       0x004A export kWh
#
# The meter keeps the energy (MID-certified ones cannot be reset from the
# bus); its power is negative when exporting. An RS-485 transceiver's
# driver-enable pin (`de_pin`, DE and /RE tied) is raised only while the
# request is sent. Under `accuracy_floor_w` (default 5 W, the SDM120's
# 20 mA starting current at 230 V) readings are flagged.
#
# Config: {"type": "sdm120", "uart": {"id": 2, "baud": 2400, "tx": 17,
#          "rx": 16}, "address": 1, "de_pin": 4, "accuracy_floor_w": 5}

from edge import hal, modbus
from edge.meters.base import Measurement, Meter, MeterError, below_floor, round_to

# model -> list of (start, count) blocks and value -> (block, register offset)
MODELS = {
    "sdm120": ([(0x0000, 0x20), (0x0046, 6)],
               {"v": (0, 0x00), "i": (0, 0x06), "p": (0, 0x0C), "pf": (0, 0x1E), "f": (1, 0), "imp": (1, 2), "exp": (1, 4)}),
    "sdm630": ([(0x002A, 0x22)],
               {"v": (0, 0), "i": (0, 6), "p": (0, 10), "pf": (0, 20), "f": (0, 28), "imp": (0, 30), "exp": (0, 32)}),
}


KEYS = ("uart", "address", "de_pin", "accuracy_floor_w", "timeout_ms", "retries")


def validate(cfg):
    """ValueError naming the key, value and allowed range, or None."""
    from edge.meters import checks  # boot and `config set` only: released after

    model = cfg.get("type")
    if model not in MODELS:
        raise ValueError("eastron model %r: expected one of %s" % (model, ", ".join(sorted(MODELS))))
    checks.known_keys(cfg, KEYS, model)
    # Eastron meters offer 1200..38400 baud (SDM120: up to 9600).
    checks.uart(cfg, 2400 if model == "sdm120" else 9600, (1200, 2400, 4800, 9600, 19200, 38400))
    checks.integer(cfg, "address", 1, 247, 1)
    checks.pin(cfg, "de_pin", None, True)
    checks.number(cfg, "accuracy_floor_w", 0, 100000, 5)
    checks.integer(cfg, "timeout_ms", 10, 10000, 300)
    checks.integer(cfg, "retries", 0, 10, 1)


def energy_wh(regs, i, what):
    # The meter counts whole Wh (or 10 Wh); the float carries them rounded,
    # so round to the nearest Wh (exactly, from the float's bits).
    try:
        return modbus.float32_scaled(regs, i, 1000)
    except ValueError as e:
        raise MeterError("%s energy %s" % (what, e))


class SDM(Meter):
    def __init__(self, cfg):
        validate(cfg)
        model = cfg["type"]
        self.model = model
        self.blocks, self.where = MODELS[model]
        ucfg = dict(cfg.get("uart", {}))
        ucfg.setdefault("baud", 2400 if model == "sdm120" else 9600)
        self.address = cfg.get("address", 1)
        de = cfg.get("de_pin")
        de_pin = hal.pin(de, hal.PIN_OUT) if de is not None else None
        self.accuracy_floor_w = cfg.get("accuracy_floor_w", 5)
        self.bus = modbus.Master(hal.uart(ucfg), ucfg["baud"], de_pin, cfg.get("timeout_ms", 300), cfg.get("retries", 1))
        self.last_import = None
        self.last_export = None
        self.pending_reason = None

    def read(self, t_ms):
        regs = []
        try:
            for start, count in self.blocks:
                regs.append(self.bus.read_registers(self.address, modbus.READ_INPUT, start, count))
        except modbus.ModbusError as e:
            raise MeterError("%s at %d: %s" % (self.model, self.address, e))

        def value(name):
            block, off = self.where[name]
            return modbus.float32(regs[block], off)

        def wh(name, what):
            block, off = self.where[name]
            return energy_wh(regs[block], off, "%s at %d: %s" % (self.model, self.address, what))

        watts = value("p")
        if watts != watts:
            raise MeterError("%s at %d: power register is NaN" % (self.model, self.address))
        imp = wh("imp", "import")
        exp = wh("exp", "export")
        reset = self.check_counters(imp, exp)
        return Measurement(imp, exp, round_to(watts, 1), round_to(value("v"), 1), round_to(value("i"), 3),
                           round_to(value("f"), 2), below_floor(watts, self.accuracy_floor_w),
                           round_to(value("pf"), 3), reset)
