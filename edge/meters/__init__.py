# Meter drivers behind one interface (see base.py). `open_meter` picks the
# driver named by the config's meter.type; drivers are imported only when
# chosen so a board carries in RAM only the one it uses.


def open_meter(meter_cfg):
    kind = meter_cfg.get("type")
    if kind == "simulated":
        from edge.meters.simulated import SimulatedMeter

        return SimulatedMeter(meter_cfg)
    raise ValueError("meter type %r is not supported" % (kind,))
