"""A board without SNTP takes its time from the coordinator's 2.01 answer,
and ignores answers that carry none or nonsense."""

from __future__ import annotations

from .mp import mp_json


def test_unsynced_clock_takes_the_coordinators_time_under_micropython() -> None:
    out = mp_json("""
import json
from edge import firmware
class F:
    pass
f = F()
f.clock = firmware.Clock(0, 1.0, 0, False)
before = f.clock.synced
firmware.Firmware.take_time(f, b"stored abc/1")
firmware.Firmware.take_time(f, b"stored abc/2 t=garbage")
after_bad = f.clock.synced
firmware.Firmware.take_time(f, b"stored abc/3 t=1782000000")
print(json.dumps([before, after_bad, f.clock.synced, int(f.clock.now())]))
""")
    before, after_bad, synced, now = out
    assert (before, after_bad, synced) == (False, False, True)
    assert 1_782_000_000 <= now < 1_782_000_010
