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
    return a


ATTEN_11DB = getattr(machine.ADC, "ATTN_11DB", None)


def ticks_ms():
    return time.ticks_ms()


def ticks_diff(a, b):
    return time.ticks_diff(a, b)


def sleep_ms(ms):
    time.sleep_ms(ms)


def irq_off():
    return machine.disable_irq()


def irq_on(state):
    machine.enable_irq(state)


def watchdog(timeout_ms):
    return machine.WDT(timeout=timeout_ms)


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
