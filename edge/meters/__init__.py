# Meter drivers behind one interface (see base.py). `open_meter` picks the
# driver named by the config's meter.type; drivers are imported only when
# chosen so a board carries in RAM only the one it uses. `validate` checks
# a meter config the same way without opening any hardware (edge/config.py
# calls it at boot and on `config set`).

TYPES = ("simulated", "pzem004t", "sdm120", "sdm630", "s0", "ct")

def _driver(kind):
    if kind == "simulated":
        from edge.meters import simulated

        return simulated
    if kind == "pzem004t":
        from edge.meters import pzem004t

        return pzem004t
    if kind in ("sdm120", "sdm630"):
        from edge.meters import sdm

        return sdm
    if kind == "s0":
        from edge.meters import s0

        return s0
    if kind == "ct":
        from edge.meters import ct

        return ct
    raise ValueError("config meter.type=%r: expected one of %s" % (kind, ", ".join(TYPES)))


SIMULATED_KEYS = ("profile", "seed", "solar_peak_w", "base_load_w", "voltage_v", "power_w")


def keys(kind):
    """The settings a driver takes (besides "type"), e.g. to keep the
    wiring when a technician changes meter.type; () for an unknown type."""
    if kind == "simulated":
        return SIMULATED_KEYS
    if kind not in TYPES:
        return ()
    return _driver(kind).KEYS


def _validate_simulated(cfg):
    from edge.meters import checks

    checks.known_keys(cfg, SIMULATED_KEYS, "simulated")
    checks.one_of(cfg, "profile", ("household", "solar", "load", "prosumer", "constant"), "household")
    checks.integer(cfg, "seed", 0, 1 << 30, 1)
    checks.number(cfg, "solar_peak_w", 0, 1000000, 0)
    checks.number(cfg, "base_load_w", 0, 1000000, 0)
    checks.number(cfg, "voltage_v", 0, 1000, 230.0)
    checks.number(cfg, "power_w", -1000000, 1000000, 1000)  # the "constant" profile's load (negative: export)


def validate(meter_cfg):
    """Raise ValueError naming the key (meter.KEY), its value and what is
    allowed if the meter config is not one its driver can run; None if it
    is. Unknown keys are refused too (a typo would silently be a default)."""
    if not isinstance(meter_cfg, dict):
        raise ValueError("config meter=%r: expected an object with a \"type\"" % (meter_cfg,))
    kind = meter_cfg.get("type")
    if kind == "simulated":
        _validate_simulated(meter_cfg)
        return
    _driver(kind).validate(meter_cfg)


def open_meter(meter_cfg):
    kind = meter_cfg.get("type")
    if kind == "simulated":
        _validate_simulated(meter_cfg)
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
