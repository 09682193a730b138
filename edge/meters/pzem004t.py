# Peacefair PZEM-004T v3.0 on a UART (TTL, 9600 8N1), Modbus-RTU.
#
# Input registers (function 0x04), read as one block of 10 from 0x0000:
#   0x0000 voltage        0.1 V
#   0x0001 current low    0.001 A   (0x0002 high word)
#   0x0003 power low      0.1 W     (0x0004 high word)
#   0x0005 energy low     1 Wh      (0x0006 high word)
#   0x0007 frequency      0.1 Hz
#   0x0008 power factor   0.01
#   0x0009 alarm          0xFFFF = power alarm, 0x0000 = none
# Energy reset: the custom function 0x42 (address, 0x42, CRC); the meter
# echoes it, or answers 0xC2 with an exception code.
#
# Energy is a 32-bit integer of Wh (two registers, low word first), kept
# an integer throughout (above 2^30 it is a long int on an ESP32, exact):
# no float ever touches it. Voltage, current and power are display values
# (float32 holds their 0.1 V / 1 mA / 0.1 W steps exactly enough).
#
# The PZEM measures magnitude only: all its energy is import and its power
# is never negative. Its power reading is unreliable under a few watts
# (the datasheet's starting power is 0.4 W; below ~5 W the error is tens of
# percent), so readings under `accuracy_floor_w` (default 5 W) are flagged.
#
# Config: {"type": "pzem004t", "uart": {"id": 2, "tx": 17, "rx": 16},
#          "address": 1, "accuracy_floor_w": 5, "timeout_ms": 200}

from edge import hal, modbus
from edge.meters.base import FLAG_METER_ALARM, Measurement, Meter, MeterError, RESET_ENERGY, below_floor

RESET_FUNCTION = 0x42
REGISTERS = 10


def decode(regs):
    """(voltage V, current A, power W, energy Wh, frequency Hz, pf, alarm)."""
    return (
        regs[0] / 10,
        modbus.u32_lo_hi(regs, 1) / 1000,
        modbus.u32_lo_hi(regs, 3) / 10,
        modbus.u32_lo_hi(regs, 5),
        regs[7] / 10,
        regs[8] / 100,
        regs[9] == 0xFFFF,
    )


KEYS = ("uart", "address", "accuracy_floor_w", "timeout_ms", "retries")


def validate(cfg):
    """ValueError naming the key, value and allowed range, or None."""
    from edge.meters import checks  # boot and `config set` only: released after

    checks.known_keys(cfg, KEYS, "pzem004t")
    # The PZEM-004T v3.0 talks 9600 8N1 only.
    checks.uart(cfg, 9600, (9600,))
    # 248 (0xF8) is the general address every PZEM answers (one per bus).
    checks.integer(cfg, "address", 1, 0xF8, 1)
    checks.number(cfg, "accuracy_floor_w", 0, 100000, 5)
    checks.integer(cfg, "timeout_ms", 10, 10000, 200)
    checks.integer(cfg, "retries", 0, 10, 1)


class PZEM004T(Meter):
    def __init__(self, cfg):
        validate(cfg)
        ucfg = dict(cfg.get("uart", {}))
        ucfg.setdefault("baud", 9600)
        self.address = cfg.get("address", 1)
        self.accuracy_floor_w = cfg.get("accuracy_floor_w", 5)
        self.bus = modbus.Master(hal.uart(ucfg), ucfg["baud"], None, cfg.get("timeout_ms", 200), cfg.get("retries", 1))
        self.last_import = None
        self.last_export = None
        self.pending_reason = None

    def read(self, t_ms):
        try:
            regs = self.bus.read_registers(self.address, modbus.READ_INPUT, 0, REGISTERS)
        except modbus.ModbusError as e:
            raise MeterError("pzem004t at %d: %s" % (self.address, e))
        volt, amps, watts, wh, hz, pf, alarm = decode(regs)
        reset = self.check_counters(wh, 0)
        flags = below_floor(watts, self.accuracy_floor_w)
        if alarm:
            flags |= FLAG_METER_ALARM
        return Measurement(wh, 0, watts, volt, amps, hz, flags, pf, reset)

    def reset_energy(self, reason=RESET_ENERGY):
        req = modbus.frame(bytes([self.address, RESET_FUNCTION]))

        def check(reply):
            modbus.check_frame(reply)
            if reply[1] == RESET_FUNCTION | 0x80:
                raise modbus.ModbusError("energy reset refused with exception %d" % reply[2])
            if reply[:2] != req[:2]:
                raise modbus.ModbusError("energy reset answered %s, expected an echo" % reply.hex())
            return True

        try:
            self.bus.transact(req, 4, check)
        except modbus.ModbusError as e:
            raise MeterError("pzem004t at %d: %s" % (self.address, e))
        # The next read sees the counter fall and records it as this reset.
        self.pending_reason = reason
