# Thin hardware layer: the only place the firmware touches hardware.
#
# On a board, `machine` provides UART, Pin, ADC and WDT and the filesystem
# is the board's flash (LittleFS). Under the unix port, `machine` exists
# but has none of those classes, so the scripted stand-in is chosen: it
# replays recorded UART replies, pulse trains and ADC samples and records
# what the firmware writes, so drivers run unchanged in tests.
#
# Interface (both backends):
#   uart(cfg) -> object with write(bytes), read(n) -> bytes or None, any()
#   pin(id, mode, pull=None) -> object with value([v]), irq(handler, trigger)
#   pin_irq(pin, handler, trigger) -> True if attached as a hard IRQ
#   pcnt(pin_id, unit, rising, glitch_ns, limit) -> object with value(), or
#       None without a hardware pulse counter (esp32.PCNT)
#   adc(id, atten=None) -> object with read_uv() (calibrated) and read_u16()
#   ticks_ms(), ticks_us(), ticks_diff(a, b), sleep_ms(ms)
#   irq_off() -> state, irq_on(state): guard counters shared with an IRQ
#   watchdog(timeout_ms) -> object with feed()
#   keep_fed(wdt, period_ms, for_ms): feed from a timer (the REPL after Ctrl-C)
#   reboot(), free_memory(), IS_BOARD, BACKEND
#   rtc_ms(), set_rtc_ms(ms): the RTC as integer Unix ms
#   sntp() -> Unix ms from one SNTP exchange (RTC set), or None

try:
    import machine

    IS_BOARD = hasattr(machine, "UART") and hasattr(machine, "Pin")
except ImportError:
    IS_BOARD = False

if IS_BOARD:
    from edge.hal import board as _backend
else:
    from edge.hal import scripted as _backend


def __getattr__(name):
    # hal.NAME is the backend's NAME, looked up when used (a module's
    # __getattr__ runs only for names not in its own dict). Copied in with
    # `from ... import *`, the backend's ~50 names took another ~1 KB of a
    # board's heap. A name set here (a test's stand-in) comes first.
    return getattr(_backend, name)
