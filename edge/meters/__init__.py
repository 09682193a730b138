# Meter drivers behind one interface (see base.py). `open_meter` picks the
# driver named by the config's meter.type; drivers are imported only when
# chosen so a board carries in RAM only the one it uses.

TYPES = ("simulated", "pzem004t", "sdm120", "sdm630", "s0", "ct")


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
