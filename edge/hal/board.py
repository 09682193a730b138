# Hardware layer on a board: `machine` underneath (see __init__.py).

import gc
import time

import machine

BACKEND = "machine"
IS_BOARD = True

PIN_IN = machine.Pin.IN
PIN_OUT = machine.Pin.OUT
PULL_UP = machine.Pin.PULL_UP
IRQ_FALLING = machine.Pin.IRQ_FALLING
IRQ_RISING = machine.Pin.IRQ_RISING


def uart(cfg):
    """A UART from the meter config: {"id": 2, "baud": 9600, "tx": 17,
    "rx": 16, "bits": 8, "parity": null, "stop": 1}."""
    kw = {
        "baudrate": cfg.get("baud", 9600),
        "bits": cfg.get("bits", 8),
        "parity": cfg.get("parity"),
        "stop": cfg.get("stop", 1),
        "timeout": cfg.get("timeout_ms", 0),
    }
    if cfg.get("tx") is not None:
        kw["tx"] = cfg["tx"]
    if cfg.get("rx") is not None:
        kw["rx"] = cfg["rx"]
    return machine.UART(cfg.get("id", 2), **kw)


def pin(pin_id, mode, pull=None):
    if pull is None:
        return machine.Pin(pin_id, mode)
    return machine.Pin(pin_id, mode, pull)


def adc(pin_id, atten=None):
    a = machine.ADC(machine.Pin(pin_id))
    if atten is not None and hasattr(a, "atten"):
        # ESP32: 11 dB attenuation gives the full 0..3.3 V range.
        a.atten(atten)
    if not hasattr(a, "read_uv"):
        return U16Microvolts(a)
    return a


class U16Microvolts:
    """read_uv() for ports whose ADC has only read_u16 (RP2040: 0..3.3 V
    reference). The ESP32's own read_uv applies the chip's eFuse
    calibration, which read_u16 does not (its raw counts are off by up to
    ~6 % between chips)."""

    FULL_SCALE_UV = 3300000

    def __init__(self, a):
        self.a = a
        self.read_u16 = a.read_u16

    def read_uv(self):
        return self.a.read_u16() * 3300000 // 65535


def pin_irq(p, handler, trigger):
    """Attach `handler` as a hard IRQ (runs at the edge, even while Python
    is busy; must not allocate) where the port has them: True. Else soft
    (run by the scheduler later): False."""
    try:
        p.irq(handler=handler, trigger=trigger, hard=True)
        return True
    except (TypeError, ValueError):
        p.irq(handler=handler, trigger=trigger)
        return False


def pcnt(pin_id, unit=0, rising=True, glitch_ns=12700, limit=32767):
    """The ESP32's hardware pulse counter on `pin_id` (MicroPython >= 1.23
    esp32.PCNT), counting rising (or falling) edges whatever Python is
    doing, or None where the board has none. The classic ESP32's counter
    is 16-bit signed: it returns to 0 at `limit` (<= 32767), so the caller
    must read it before `limit` more edges arrive. The glitch filter
    ignores pulses shorter than `glitch_ns` (at most 1023 ticks of the
    80 MHz APB clock, 12.8 us)."""
    try:
        import esp32

        P = esp32.PCNT
    except (ImportError, AttributeError):
        return None
    ticks = glitch_ns * 80 // 1000
    if ticks > 1023:
        ticks = 1023
    # Pin(id) alone leaves the mode and pull-up the driver set untouched.
    kw = {"pin": machine.Pin(pin_id), "max": limit, "filter": ticks}
    if rising:
        kw["rising"] = P.INCREMENT
        kw["falling"] = P.IGNORE
    else:
        kw["rising"] = P.IGNORE
        kw["falling"] = P.INCREMENT
    c = P(unit, **kw)
    if hasattr(c, "start"):
        c.start()
    return c


ATTEN_11DB = getattr(machine.ADC, "ATTN_11DB", None)


def ticks_ms():
    return time.ticks_ms()


def ticks_diff(a, b):
    return time.ticks_diff(a, b)


def ticks_us():
    return time.ticks_us()


def sleep_ms(ms):
    time.sleep_ms(ms)


def irq_off():
    return machine.disable_irq()


def irq_on(state):
    machine.enable_irq(state)


def watchdog(timeout_ms):
    return machine.WDT(timeout=timeout_ms)


def keep_fed(wdt, period_ms, for_ms):
    """Feed `wdt` from a timer every period_ms for for_ms, then stop. Once
    armed an ESP32's watchdog cannot be disabled: after Ctrl-C this keeps
    the REPL (and mpremote) alive for a while; when it stops, the watchdog
    restarts the board into the firmware, so a forgotten REPL session does
    not end metering for good. The callback runs as a scheduled (soft)
    callback, which the REPL runs while it waits for input."""
    start = time.ticks_ms()
    timer = machine.Timer(0)

    def tick(t):
        if time.ticks_diff(time.ticks_ms(), start) >= for_ms:
            timer.deinit()
            return
        wdt.feed()

    timer.init(period=period_ms, mode=machine.Timer.PERIODIC, callback=tick)
    return timer


def reboot():
    machine.reset()


def free_memory():
    gc.collect()
    return gc.mem_free()


def wait_tx_done(u, nbytes, baud):
    """Block until `u` has shifted out its last byte (RS-485 direction
    switching must not cut the frame short)."""
    if hasattr(u, "flush"):
        u.flush()
    else:
        time.sleep_us(nbytes * 10 * 1000000 // baud + 100)


class Network:
    """Wi-Fi station from the config's "wifi" ({"ssid", "password"}); null
    means the board is already online (Ethernet) or offline by design."""

    def __init__(self, wifi_cfg):
        self.cfg = wifi_cfg
        self.wlan = None
        self.last_try = None
        if wifi_cfg:
            import network

            self.wlan = network.WLAN(network.STA_IF)
            self.wlan.active(True)
            self.connect()

    def connect(self):
        self.last_try = time.ticks_ms()
        try:
            self.wlan.connect(self.cfg["ssid"], self.cfg.get("password", ""))
        except OSError:
            pass

    def up(self):
        return self.wlan is None or self.wlan.isconnected()

    def ensure(self, retry_ms=30000):
        """Reconnect when down, at most every retry_ms."""
        if self.wlan is None or self.wlan.isconnected():
            return True
        if self.last_try is None or time.ticks_diff(time.ticks_ms(), self.last_try) >= retry_ms:
            self.connect()
        return False


def network(wifi_cfg):
    return Network(wifi_cfg)


NTP_HOST = "pool.ntp.org"
NTP_TO_UNIX = 2208988800
UNIX_TO_2000 = 946684800
# Seconds from the Unix epoch to the port's epoch (ESP32: 2000-01-01).
_EPOCH_S = UNIX_TO_2000 if time.gmtime(0)[0] == 2000 else 0


def rtc_ms():
    """The RTC as Unix ms (an int; float seconds would be 128 s steps)."""
    if hasattr(time, "time_ns"):
        return time.time_ns() // 1000000 + _EPOCH_S * 1000
    return (time.time() + _EPOCH_S) * 1000


def set_rtc_ms(ms):
    """Set the RTC (kept across resets, not power cuts) to Unix ms."""
    tm = time.gmtime(ms // 1000 - _EPOCH_S)
    # ESP32: the eighth field is microseconds.
    machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6], tm[3], tm[4], tm[5], ms % 1000 * 1000))


def sntp(host=NTP_HOST, timeout_s=2, port=123):
    """One SNTP exchange (RFC 4330): sets the RTC and returns Unix ms, or
    None if no valid answer came."""
    import socket
    import struct

    try:
        addr = socket.getaddrinfo(host, port)[0][-1]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.settimeout(timeout_s)
            query = bytearray(48)
            query[0] = 0x1B  # LI 0, version 3, mode 3 (client)
            s.sendto(query, addr)
            reply = s.recv(48)
        finally:
            s.close()
    except OSError:
        return None
    if len(reply) < 48 or reply[1] == 0:  # stratum 0: kiss-o'-death
        return None
    secs, frac = struct.unpack("!II", reply[40:48])  # transmit timestamp
    ms = (secs - NTP_TO_UNIX) * 1000 + (frac * 1000 >> 32)
    set_rtc_ms(ms)
    return ms
