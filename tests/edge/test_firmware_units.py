"""Small firmware pieces under MicroPython: the clock's sync state and
the error backoff."""

from __future__ import annotations

from .mp import mp_json


def test_clock_is_unsynced_on_a_board_until_set_and_then_follows_the_given_time() -> None:
    got = mp_json("""
import json
from edge import hal
from edge.clock import Clock
hal.load({"virtual_time": True})
c = Clock()
before = c.synced
c.sync(1700000000000, "coordinator")
print(json.dumps([before, c.synced, c.now_ms(), Clock(1700000000, 60).synced]))
""")
    # A demo's fixed clock_start counts as known time.
    assert got == [False, True, 1700000000000, True]


def test_errors_back_off_exponentially_up_to_16_times_and_reset_on_success() -> None:
    got = mp_json("""
import json
from edge.firmware import Errors
e = Errors()
seen = [e.backoff("meter")]
for i in range(7):
    e.add("meter", "no reply %d" % i)
    seen.append(e.backoff("meter"))
e.ok("meter")
seen.append(e.backoff("meter"))
print(json.dumps([seen, e.counts["meter"], e.last]))
""")
    assert got == [[1, 1, 2, 4, 8, 16, 16, 16, 1], 7, "meter: no reply 6"]
