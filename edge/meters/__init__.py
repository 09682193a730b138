# Meter drivers behind one interface (see base.py). `open_meter` picks the
# driver named by the config's meter.type; drivers are imported only when
# chosen so a board carries in RAM only the one it uses.

TYPES = ("simulated", "pzem004t", "sdm120", "sdm630", "s0", "ct")

# Keys holding a GPIO number, per type (uart holds "tx", "rx" and "id").
_PINS = {"s0": ("pin",), "ct": ("v_pin", "i_pin"), "sdm120": ("de_pin",), "sdm630": ("de_pin",)}
_MODBUS = ("pzem004t", "sdm120", "sdm630")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def validate(meter_cfg):
    """Check the driver's own keys without opening any hardware, so
    `config set` refuses what the driver would refuse at boot. Raises
    ValueError naming the key (meter.KEY), the value and what is allowed.
    (Minimal: Modbus addresses and pin numbers; drivers may check more.)"""
    kind = meter_cfg.get("type")
    if kind not in TYPES:
        raise ValueError("meter.type=%r: expected one of %s" % (kind, ", ".join(TYPES)))
    if kind in _MODBUS and "address" in meter_cfg:
        a = meter_cfg["address"]
        # 248 (0xF8) is the PZEM-004T's general address (one meter per bus).
        top = 248 if kind == "pzem004t" else 247
        if not _is_int(a) or not 1 <= a <= top:
            raise ValueError("meter.address=%r: expected an integer in 1..%d (the %s's Modbus address)" % (a, top, kind))
    for key in _PINS.get(kind, ()):
        v = meter_cfg.get(key)
        if v is not None and (not _is_int(v) or not 0 <= v <= 48):
            raise ValueError("meter.%s=%r: expected a GPIO number 0..48" % (key, v))
    if kind in _MODBUS and "uart" in meter_cfg:
        u = meter_cfg["uart"]
        if not isinstance(u, dict):
            raise ValueError("meter.uart=%r: expected an object with id, tx, rx" % (u,))
        for key in ("id", "tx", "rx"):
            v = u.get(key)
            if v is not None and (not _is_int(v) or not 0 <= v <= 48):
                raise ValueError("meter.uart.%s=%r: expected an integer 0..48" % (key, v))


def open_meter(meter_cfg):
    kind = meter_cfg.get("type")
    if kind == "simulated":
        from edge.meters.simulated import SimulatedMeter

        return SimulatedMeter(meter_cfg)
    if kind == "pzem004t":
        from edge.meters.pzem004t import PZEM004T

        return PZEM004T(meter_cfg)
    if kind in ("sdm120", "sdm630"):
        from edge.meters.sdm import SDM

        return SDM(meter_cfg)
    if kind == "s0":
        from edge.meters.s0 import S0Meter

        return S0Meter(meter_cfg)
    if kind == "ct":
        from edge.meters.ct import CTMeter

        return CTMeter(meter_cfg)
    raise ValueError("meter type %r is not supported; expected one of %s" % (kind, ", ".join(TYPES)))
