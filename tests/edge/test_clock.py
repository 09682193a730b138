"""The meter's clock (edge/clock.py) under MicroPython, on the scripted
hardware layer's virtual time: integer ms across tick wraps, the RTC and
SNTP as sources, periodic re-sync, steps flagged once, timestamps that
never go back, accelerated demo clocks in integer arithmetic."""

from __future__ import annotations

from .mp import mp_json

T0 = 1796283264000  # ms; in float32 seconds, T0 + 3 s == T0

SETUP = """
import json
from edge import hal, log
from edge.clock import Clock
from edge.meters.base import FLAG_TIME_STEPPED, FLAG_TIME_UNSET
hal.load({"virtual_time": True})
T0 = %d
""" % T0


def test_a_board_whose_rtc_was_never_set_flags_readings_until_sntp_gives_the_time() -> None:
    got = mp_json(SETUP + """
c = Clock()  # the RTC reads 2000-01-01: never set
out = [c.synced, c.source, c.stamp(c.now_ms())[1] == FLAG_TIME_UNSET]
hal.set_true_time(T0)
due = c.sntp_due()
offset = c.sync(hal.sntp(), "sntp")
hal.advance(3000)
t, flags = c.stamp(c.now_ms())
print(json.dumps(out + [due, c.synced, c.source, t, flags, c.steps, offset > 0]))
""")
    assert got == [False, None, True, True, True, "sntp", T0 // 1000 + 3, 0, 0, True]


def test_a_set_rtc_is_trusted_at_boot_then_resynced_at_once_and_every_resync_period() -> None:
    got = mp_json(SETUP + """
hal.set_rtc_ms(T0)
c = Clock(resync_s=3600)
out = [c.synced, c.source, c.wants_time(), c.sntp_due(), c.sntp_due()]
# SNTP unreachable: retried once a minute, not on every pass.
tries = 0
for s in range(120):
    hal.advance(1000)
    c.tick()
    if c.sntp_due():
        tries += 1
out.append(tries)
c.sync(T0 + 120000, "sntp")
out.append(c.wants_time())
hal.advance(3599000)
c.tick()
out.append(c.wants_time())
hal.advance(1000)
c.tick()
out += [c.wants_time(), c.sntp_due()]
print(json.dumps(out))
""")
    assert got == [True, "rtc", True, True, False, 2, False, False, True, True]


def test_time_stays_exact_across_tick_wraps_for_a_year() -> None:
    """Ticks wrap every 2^30 ms (12.4 days) in the esp32-like build; the
    clock adds up steps of 2^28 ms (a tick at least every 3.1 days) and
    stays exact to the ms for 365 days."""
    got = mp_json(SETUP + """
hal.set_rtc_ms(T0)
c = Clock()
total = 0
wrapped = 0
last = hal.ticks_ms()
step = 1 << 28
while total + step <= 365 * 86400000:
    hal.advance(step)
    total += step
    c.tick()
    now = hal.ticks_ms()
    if now < last:
        wrapped += 1
    last = now
rest = 365 * 86400000 - total
hal.advance(rest)
print(json.dumps([c.now_ms() - T0, c.uptime_ms(), wrapped, c.stamp(c.now_ms())[0]]))
""")
    year_ms = 365 * 86_400_000
    assert got[:2] == [year_ms, year_ms]
    assert got[3] == (T0 + year_ms) // 1000
    # The esp32-like build wraps (the unix port's ticks do not in a year).
    assert got[2] in (0, year_ms // (1 << 30))


def test_a_tick_gap_over_2_29_ms_is_what_breaks_a_32_bit_clock(mp_runtime: str) -> None:
    """Why the firmware ticks the clock every second: across a gap longer
    than half the tick period the difference reads negative on a 32-bit
    port. The clock then loses the gap instead of jumping back 12.4 days,
    and the next SNTP answer steps it right, flagged."""
    got = mp_json(SETUP + """
hal.set_rtc_ms(T0)
hal.set_true_time(T0)
c = Clock()
c.sync(hal.sntp(), "sntp")
before = c.now_ms()
hal.advance(600000000)  # 6.9 days without a tick
after = c.now_ms()
c.sync(hal.sntp(), "sntp")
print(json.dumps([after - before, c.steps, c.stamp(c.now_ms())[1]]))
""")
    if mp_runtime == "esp32like":
        assert got == [0, 1, 8]
    else:
        assert got == [600_000_000, 0, 0]


def test_a_step_is_logged_once_and_flagged_on_the_next_kept_reading_a_small_correction_is_not() -> None:
    got = mp_json(SETUP + """
hal.set_rtc_ms(T0)
c = Clock()
out = []
def reading():
    hal.advance(10000)
    t, flags = c.stamp(c.now_ms())
    return t, flags
t, f = reading(); c.commit(t)
# 1.5 s: a correction, not a step.
out.append(c.sync(c.now_ms() + 1500, "sntp"))
t, f = reading(); c.commit(t); out.append(f)
# +30 s: a step. The reading made but not kept (outbox full, say) does
# not use up the flag; the next kept one carries it, the one after not.
out.append(c.sync(c.now_ms() + 30000, "coordinator"))
t, f = reading(); out.append(f)
t, f = reading(); c.commit(t); out.append(f)
t, f = reading(); c.commit(t); out.append(f)
out.append([line for line in log._recent if "stepped" in line])
print(json.dumps(out))
""")
    assert got[0] == 1500 and got[1] == 0
    assert got[2] == 30000 and got[3:6] == [8, 8, 0]
    assert got[6] == ["WARN clock: clock stepped +30000 ms by coordinator"]


def test_when_the_clock_steps_back_readings_are_held_one_second_after_the_last_and_flagged() -> None:
    got = mp_json(SETUP + """
hal.set_rtc_ms(T0)
c = Clock()
ts = []
for i in range(3):
    hal.advance(10000)
    t, f = c.stamp(c.now_ms()); c.commit(t); ts.append([t - T0 // 1000, f])
c.sync(c.now_ms() - 25000, "sntp")
for i in range(4):
    hal.advance(10000)
    t, f = c.stamp(c.now_ms()); c.commit(t); ts.append([t - T0 // 1000, f])
print(json.dumps(ts))
""")
    # 10, 20, 30; stepped back 25 s: the clock reads 15, 25, 35, 45.
    assert got == [[10, 0], [20, 0], [30, 0], [31, 8], [32, 8], [35, 0], [45, 0]]


def test_accelerated_clocks_use_integer_speed_and_ignore_outside_time() -> None:
    got = mp_json(SETUP + """
hal.set_rtc_ms(T0)
fast = Clock(1700000000, 60)
slow = Clock(1700000000, 0.5)
shared = Clock(1700000000, 60, 1796283000)  # started 264 s of real time ago
hal.advance(3001)
out = [fast.now_ms(), slow.now_ms(), shared.now_ms(), fast.synced, fast.wants_time()]
out.append(fast.sync(T0, "coordinator"))
out.append(fast.now_ms())
# Readings 3 s of simulated time apart are 3 s apart.
hal.advance(50)
out.append(fast.stamp(fast.now_ms())[0])
print(json.dumps(out))
""")
    assert got[0] == 1_700_000_000_000 + 3001 * 60
    assert got[1] == 1_700_000_000_000 + 1500  # 3001 * 0.5, rounded down
    assert got[2] == 1_700_000_000_000 + (264_000 + 3001) * 60
    assert got[3:5] == [True, False]
    assert got[5] is None and got[6] == got[0]
    assert got[7] == 1_700_000_183


def test_sntp_unanswered_leaves_the_clock_unsynced_and_the_firmware_takes_the_coordinators_time() -> None:
    got = mp_json(SETUP + """
from edge import firmware
from edge.meters.simulated import SimulatedMeter
class F:
    # The firmware's time-taking methods on just a clock and a meter.
    take_time = firmware.Firmware.take_time
    _set_time = firmware.Firmware._set_time
f = F()
f.clock = Clock()
f.meter = SimulatedMeter({"profile": "constant", "power_w": 1000})
f.meter.read(f.clock.now_ms())
hal.set_sntp(False)
out = [hal.sntp(), f.clock.synced]
firmware.Firmware.take_time(f, b"stored abc/1")
firmware.Firmware.take_time(f, b"stored abc/2 t=garbage")
firmware.Firmware.take_time(f, b"stored abc/3 t=12")
out.append(f.clock.synced)
firmware.Firmware.take_time(f, b"stored abc/4 t=1796283264")
out += [f.clock.synced, f.clock.source, f.clock.now_ms(), f.clock.wants_time()]
# Not due again for 6 h: a later answer is not taken.
firmware.Firmware.take_time(f, b"stored abc/5 t=1796290000")
out.append(f.clock.now_ms())
# The 26 years the clock moved book no energy: 1000 W for the 10 s that passed.
hal.advance(10000)
out.append(f.meter.energy.import_uj)
f.meter.read(f.clock.now_ms())
out.append(f.meter.energy.import_uj)
print(json.dumps(out))
""")
    assert got[:3] == [None, False, False]
    assert got[3:7] == [True, "coordinator", T0 + 500, False]  # the middle of the truncated second
    assert got[7] == T0 + 500
    assert got[8] == 0 and got[9] == 1000 * 1000 * 10_000  # mW * ms
