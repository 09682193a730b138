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
