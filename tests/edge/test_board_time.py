"""The board backend's time functions (edge/hal/board.py) under MicroPython,
with a stand-in `machine` (the unix port has no RTC) and a real SNTP
exchange with a server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Iterator

import pytest

from ..conftest import run_micropython

NTP_TO_UNIX = 2_208_988_800
UNIX_S = 1_796_283_264

SCRIPT = """
import json, sys, time

class _Pin:
    IN = 1
    OUT = 3
    PULL_UP = 1
    IRQ_FALLING = 1
    IRQ_RISING = 2

class _RTC:
    set_to = []
    def datetime(self, tm):
        _RTC.set_to.append(list(tm))

class _Machine:
    Pin = _Pin
    RTC = _RTC
    UART = object
    ADC = object

sys.modules["machine"] = _Machine
from edge.hal import board
out = [board.sntp("127.0.0.1", 1, %(port)d) for i in range(%(n)d)]
host_ms = time.time_ns() // 1000000
rtc = board.rtc_ms()
print(json.dumps([out, _RTC.set_to, abs(rtc - host_ms) < 5000]))
"""


@pytest.fixture
def sntp_server() -> Iterator[tuple[int, list[bytes]]]:
    """Answers each query with the next reply; None = stay silent."""
    replies: list[bytes] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, addr = sock.recvfrom(100)
            except OSError:
                continue
            if len(query) == 48 and query[0] == 0x1B and replies:
                reply = replies.pop(0)
                if reply:
                    sock.sendto(reply, addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield sock.getsockname()[1], replies
    stop.set()
    t.join(2)
    sock.close()


def ntp_reply(unix_s: int, frac: int, stratum: int = 2) -> bytes:
    reply = bytearray(48)
    reply[0] = 0x1C  # LI 0, version 3, mode 4 (server)
    reply[1] = stratum
    reply[40:48] = struct.pack("!II", unix_s + NTP_TO_UNIX, frac)
    return bytes(reply)


def test_sntp_gives_unix_ms_with_the_fraction_and_sets_the_rtc_refusing_kiss_of_death_and_silence(
        sntp_server: tuple[int, list[bytes]]) -> None:
    port, replies = sntp_server
    replies += [ntp_reply(UNIX_S, 1 << 31), ntp_reply(UNIX_S, 0, stratum=0), b""]
    out, rtc_set, rtc_near_host = json.loads(
        run_micropython(SCRIPT % {"port": port, "n": 3}).strip().splitlines()[-1])
    # Half a second from the fraction field; no answer from a stratum-0
    # (kiss-o'-death) reply or from silence.
    assert out == [UNIX_S * 1000 + 500, None, None]
    # 2026-12-03 07:34:24.5 UTC, a Thursday (weekday 3), microseconds last.
    assert rtc_set == [[2026, 12, 3, 3, 7, 34, 24, 500000]]
    assert rtc_near_host
