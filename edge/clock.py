# The meter's clock: Unix time in integer milliseconds, right for years.
#
# Why integers: an ESP32's floats are single precision, so Unix time in a
# float moves in 128 s steps (1796283264.0 + 3.0 == 1796283264.0). Every
# value here is an int; past 2^30 MicroPython makes it a heap bigint, which
# is fine outside IRQ handlers.
#
# Why accumulate: `time.ticks_diff` is only valid within +-2^29 ms (6.2 days
# on a 32-bit port). tick() adds the ticks elapsed since its last call into
# `elapsed_ms`, an unbounded int; the firmware's loop calls it at least once
# a second, so each step is far inside the valid range however long the
# board runs.
#
# Where the time comes from:
#   - at boot, the board's RTC (`hal.rtc_ms()`): an ESP32 keeps it across
#     resets (not power cuts); a value before 2020-09-13 means never set,
#     and readings carry FLAG_TIME_UNSET until a source below sets it;
#   - SNTP at boot once the network is up, then every `resync_s`
#     (default 6 h), retried every minute while due;
#   - the coordinator's 2.01 "t=UNIX" whenever a sync is due and SNTP has
#     not given one (t is whole seconds, truncated: taken as t + 0.5 s).
# A sync that moves the clock by more than STEP_TOLERANCE_MS is a step: it
# is logged once and the next reading carries FLAG_TIME_STEPPED.
#
# Readings never go back in time: stamp() gives each reading a whole second
# strictly after the previous reading's. When the clock is behind the last
# reading (it stepped back), the reading is held at previous + 1 s and
# flagged FLAG_TIME_STEPPED, so an auditor sees both that the order of
# timestamps is the order of readings and which timestamps are not the
# clock's own. The firmware keeps the last timestamp in its journal, so
# this holds across a reboot that lost the time too (readings then carry
# FLAG_TIME_UNSET | FLAG_TIME_STEPPED until a source sets the clock).
#
# Accelerated clocks (demos, tests): clock_start (Unix s, 0 = now) advanced
# clock_speed times faster than real time; with clock_origin (the real
# Unix s at which simulated time was clock_start) several meters and
# coordinators share one simulated clock. Speed is applied as an integer
# ratio (thousandths). Such a clock's time is set by its config: it is
# never re-synced.

from edge import hal, log
from edge.meters.base import FLAG_TIME_STEPPED, FLAG_TIME_UNSET

TAG = "clock"

PLAUSIBLE_MS = 1600000000000  # 2020-09-13: an RTC before this was never set
STEP_TOLERANCE_MS = 2000  # a sync moving the clock further is a step
RESYNC_S = 21600  # 6 h: a crystal within 50 ppm drifts about 1 s in that time
RETRY_MS = 60000  # while a sync is due, SNTP is tried at most once a minute
SPEED_DEN = 1000  # clock_speed is kept as an integer number of thousandths


def _ms(seconds):
    # Config seconds (int, or float for clock_origin) to integer ms.
    if isinstance(seconds, int):
        return seconds * 1000
    whole = int(seconds)
    return whole * 1000 + int((seconds - whole) * 1000 + 0.5)


class Clock:
    def __init__(self, start_s=0, speed=1, origin_s=0, resync_s=RESYNC_S, ticks_ms=None, ticks_diff=None,
                 rtc_ms=None, set_rtc_ms=None):
        self._ticks_ms = ticks_ms or hal.ticks_ms
        self._ticks_diff = ticks_diff or hal.ticks_diff
        self._rtc_ms = rtc_ms or hal.rtc_ms
        self._set_rtc_ms = set_rtc_ms or hal.set_rtc_ms
        self._last_ticks = self._ticks_ms()
        self.elapsed_ms = 0  # real ms since boot, accumulated from ticks
        self.speed_num = int(speed * SPEED_DEN + 0.5)
        if self.speed_num < 1:
            raise ValueError("clock_speed %r: expected at least 1/%d" % (speed, SPEED_DEN))
        self.origin_ms = _ms(origin_s) if origin_s else 0
        self.simulated = bool(start_s) or bool(origin_s) or self.speed_num != SPEED_DEN
        self.resync_ms = int(resync_s * 1000)
        rtc = self._rtc_ms()
        if start_s:
            self.base_ms = _ms(start_s)
            self.source = "config"
        else:
            self.base_ms = rtc
            self.source = "rtc" if rtc >= PLAUSIBLE_MS else None
        self.anchor_ms = 0  # elapsed_ms at which the clock read base_ms
        self._offset_ms = self.base_ms  # base_ms - anchor_ms: now = elapsed + this
        # False on a board until its RTC, SNTP or the coordinator gave the
        # time: readings made meanwhile carry FLAG_TIME_UNSET.
        self.synced = self.source is not None
        self.synced_at = None  # elapsed_ms of the last sync from outside
        self._due_at = None  # elapsed_ms when the next sync is due (None: now)
        self.tried_at = None  # elapsed_ms of the last SNTP attempt
        self.stepped = False  # a step not yet carried by a reading
        self.steps = 0
        self.last_offset_ms = None
        self.last_t = None  # the last reading's timestamp (s)

    def tick(self):
        """Add the ticks since the last call to elapsed_ms. Call at least
        every few days (the firmware does every second): a step longer than
        2^29 ms would read as negative on a 32-bit port."""
        now = self._ticks_ms()
        d = self._ticks_diff(now, self._last_ticks)
        self._last_ticks = now
        if d > 0:
            self.elapsed_ms += d
        return self.elapsed_ms

    def uptime_ms(self):
        return self.tick()

    def now_ms(self):
        """Unix time in integer milliseconds."""
        if not self.simulated:
            return self.tick() + self._offset_ms
        d = self.tick() - self.anchor_ms
        if self.origin_ms:
            # Shared simulated clock: base at real Unix time origin.
            d = self._rtc_ms() - self.origin_ms
        return self.base_ms + d * self.speed_num // SPEED_DEN

    def wants_time(self):
        """True when a time from outside would be taken: never synced from
        outside since boot, or the last sync is resync_s old (as of the
        last tick)."""
        if self.simulated:
            return False
        due = self._due_at
        return due is None or self.elapsed_ms >= due

    def sntp_due(self):
        """wants_time(), and SNTP not tried within the last minute. Marks
        the attempt."""
        if self.simulated:
            return False
        elapsed = self.elapsed_ms
        due = self._due_at
        if due is not None and elapsed < due:
            return False
        if self.tried_at is not None and elapsed - self.tried_at < RETRY_MS:
            return False
        self.tried_at = elapsed
        return True

    def sync(self, unix_ms, source):
        """Take the time from outside; returns how far the clock moved (ms),
        or None for a simulated clock, whose time its config sets."""
        if self.simulated:
            return None
        offset = unix_ms - self.now_ms()
        self.base_ms = unix_ms
        self.anchor_ms = self.elapsed_ms
        self._offset_ms = unix_ms - self.elapsed_ms
        self.synced_at = self.elapsed_ms
        self._due_at = self.elapsed_ms + self.resync_ms
        self.last_offset_ms = offset
        if not self.synced:
            log.info(TAG, "time set by %s: %d" % (source, unix_ms // 1000))
        elif offset > STEP_TOLERANCE_MS or offset < -STEP_TOLERANCE_MS:
            self.stepped = True
            self.steps += 1
            log.warning(TAG, "clock stepped %s%d ms by %s" % ("+" if offset > 0 else "", offset, source))
        self.synced = True
        self.source = source
        if source != "sntp":  # SNTP has set the RTC itself
            try:
                self._set_rtc_ms(unix_ms)
            except OSError as e:
                log.warning(TAG, "RTC not set: %s" % e)
        return offset

    def stamp(self, t_ms):
        """(timestamp in whole seconds, flags) for a reading taken at t_ms:
        strictly after the previous reading's timestamp, flagged as the
        module comment says. commit(t) once the reading is kept."""
        t = t_ms // 1000
        flags = 0
        if not self.synced:
            flags |= FLAG_TIME_UNSET
        if self.stepped:
            flags |= FLAG_TIME_STEPPED
        if self.last_t is not None and t <= self.last_t:
            t = self.last_t + 1
            flags |= FLAG_TIME_STEPPED
        return t, flags

    def commit(self, t):
        """The reading stamped t is kept: the step it carried is told."""
        self.last_t = t
        self.stepped = False
