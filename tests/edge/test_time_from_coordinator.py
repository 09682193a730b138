"""A board without SNTP takes its time from the coordinator's 2.01 answer,
and ignores answers that carry none or nonsense."""

from __future__ import annotations

from .mp import mp_json


def test_unsynced_clock_takes_the_coordinators_time_under_micropython() -> None:
    out = mp_json("""
import json
from edge import firmware, hal
hal.load({"virtual_time": True})
class F:
    # The firmware's time-taking methods on just a clock and a meter.
    take_time = firmware.Firmware.take_time
    _set_time = firmware.Firmware._set_time
f = F()
f.clock = firmware.Clock()  # a board's RTC, never set
f.meter = firmware.open_meter({"type": "simulated"})
before = f.clock.synced
firmware.Firmware.take_time(f, b"stored abc/1")
firmware.Firmware.take_time(f, b"stored abc/2 t=garbage")
after_bad = f.clock.synced
firmware.Firmware.take_time(f, b"stored abc/3 t=1782000000")
print(json.dumps([before, after_bad, f.clock.synced, f.clock.now_ms() // 1000]))
""")
    before, after_bad, synced, now = out
    assert (before, after_bad, synced) == (False, False, True)
    assert now == 1_782_000_000
