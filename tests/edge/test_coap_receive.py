"""edge/coap.py's receive path under MicroPython: a datagram that is not
the answer (another exchange's, or one too large for the meter's 640-byte
receive buffer, perhaps cut short) is passed over without ending the wait
for the real one early, and the updater can take an answer's payload as a
view into the datagram instead of a copy."""

from __future__ import annotations

import socket
import threading
import time

from ..conftest import free_udp_port
from .mp import mp_json


def serve(server: socket.socket, answers: int) -> None:
    """For each request: a stray ACK (another message id and token), an
    oversized copy of the real answer, then after 0.3 s the real answer."""
    for _ in range(answers):
        try:
            data, addr = server.recvfrom(2048)
        except OSError:
            return
        mid, tkl = data[2:4], data[0] & 15
        token = data[4:4 + tkl]
        other = bytes([mid[0] ^ 0xFF, mid[1]])
        stray = bytes([0x60 | tkl, 0x41]) + other + bytes(b ^ 0x55 for b in token) + b"\xffnot yours"
        real = bytes([0x60 | tkl, 0x45]) + mid + token + b"\xff" + bytes(range(200))
        server.sendto(stray, addr)
        server.sendto(real[:-200] + bytes(700), addr)  # right id and token, larger than the meter takes
        time.sleep(0.3)
        server.sendto(real, addr)


def test_the_answer_after_a_stray_and_an_oversized_datagram_is_taken_in_time() -> None:
    port = free_udp_port()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", port))
    server.settimeout(60)
    t = threading.Thread(target=serve, args=(server, 2), daemon=True)
    t.start()
    try:
        got = mp_json("""
import json
from edge import coap
# One transmission, a 3 s wait: the stray datagrams must not cut it short.
c = coap.Client("127.0.0.1", %d, 3.0, 0)
code, payload = c.post("fw/x", b"", None, 1)
copied = [coap.code_str(code), type(payload).__name__, list(payload[:3]), len(payload)]
code, payload = c.post("fw/x", b"", None, 1, view=True)
viewed = [coap.code_str(code), type(payload).__name__, bytes(payload) == bytes(range(200))]
print(json.dumps({"copied": copied, "viewed": viewed, "retransmissions": c.retransmissions}))
""" % port)
    finally:
        t.join(10)
        server.close()
    assert got["copied"] == ["2.05", "bytes", [0, 1, 2], 200], got
    assert got["viewed"] == ["2.05", "memoryview", True], got
    assert got["retransmissions"] == 0
