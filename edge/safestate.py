# Safe mode's state: what the console shows and changes while the start-up
# fails, and when to try again (edge/safemode.py has the why). Imported
# only when a start-up fails.

import sys

from edge import config as config_mod
from edge import log, ticks
from edge.safemode import RETRY_FIRST_MS, RETRY_MAX_MS, TAG, _reason


class SafeMode:
    """Stands in for the firmware while start-up fails: what the console
    shows and changes, and when to try again."""

    def __init__(self, config_path, watchdog):
        self.config_path = config_path
        self.watchdog = watchdog
        self.boot_ms = ticks.ticks_ms()
        self.safe_reason = None
        self.cfg = None  # the config as far as it can be read (None: not at all)
        self.attempts = 0
        self.delay_ms = RETRY_FIRST_MS
        self.wait_start = ticks.ticks_ms()
        self.retry_now = False
        self.running = True
        self.reboot_requested = False

    def failed(self, e):
        """A start-up attempt failed with exception e."""
        self.attempts += 1
        reason = _reason(e)
        if reason != self.safe_reason:
            log.error(TAG, "safe mode: %s (console open; start-up is tried again)" % reason)
            if not isinstance(e, ValueError):
                sys.print_exception(e)
        self.safe_reason = reason
        try:
            self.cfg = config_mod.merged(config_mod.load_raw(self.config_path))
        except ValueError:
            self.cfg = None

    def config_changed(self, cfg):
        """The console saved the config: try the start-up at once."""
        self.cfg = cfg
        self.retry_now = True
        self.delay_ms = RETRY_FIRST_MS

    def uptime_s(self):
        return ticks.since(self.boot_ms) // 1000

    def retry_in_s(self):
        return max(0, self.delay_ms - ticks.since(self.wait_start)) // 1000

    def wait(self, console):
        """Run the console and feed the watchdog until the next start-up
        attempt is due. False when the console asked for a reboot."""
        self.retry_now = False
        self.wait_start = ticks.ticks_ms()
        while self.running:
            if self.watchdog is not None:
                self.watchdog.feed()
            left = self.delay_ms - ticks.since(self.wait_start)
            if self.retry_now or left <= 0:
                break
            console.poll(min(left, 1000))
        self.delay_ms = min(self.delay_ms * 2, RETRY_MAX_MS)
        return self.running
