"""An attacker on the meter's path (real UDP on 127.0.0.1): a relay that
captures everything, withholds each request the first time it sees it
while racing the coordinator with forged 2.01 acknowledgements (one in
clear, one with an OSCORE option and random ciphertext), and forwards the
retransmission. A meter that believed a forged 2.01 would drop a reading
the coordinator never got."""

from __future__ import annotations

import os
import socket
import threading


def _forged_acks(datagram: bytes) -> list[bytes]:
    tkl = datagram[0] & 0x0F
    mid_token = datagram[2:4 + tkl]
    head = bytes((0x60 | tkl, 65)) + mid_token  # ACK, 2.01 Created
    clear = head + b"\xff" + b"stored 0000000000000000/1 t=1700000000"
    # OSCORE option (9), empty value, then 2.04 with random "ciphertext".
    oscore = bytes((0x60 | tkl, 68)) + mid_token + b"\x90\xff" + os.urandom(24)
    return [clear, oscore]


class Relay:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.upstream.bind(("127.0.0.1", 0))
        self.upstream.settimeout(0.1)
        self.captured: list[bytes] = []
        self.forged = 0
        self.withheld = 0
        self.attacking = True
        self._seen: set[bytes] = set()
        self._meter: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._down, daemon=True), threading.Thread(target=self._up, daemon=True)]

    def __enter__(self) -> "Relay":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.sock.close()
        self.upstream.close()

    def _down(self) -> None:
        # meter -> coordinator
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except OSError:
                continue
            self._meter = addr
            self.captured.append(data)
            is_request = len(data) >= 4 and (data[0] >> 4) & 3 == 0 and 1 <= data[1] <= 31
            key = data[2:4]
            if self.attacking and is_request and key not in self._seen:
                self._seen.add(key)
                self.withheld += 1
                for forged in _forged_acks(data):
                    self.sock.sendto(forged, addr)
                    self.forged += 1
                continue
            self.upstream.sendto(data, self.target)

    def _up(self) -> None:
        # coordinator -> meter
        while not self._stop.is_set():
            try:
                data, _ = self.upstream.recvfrom(2048)
            except OSError:
                continue
            if self._meter is not None:
                self.sock.sendto(data, self._meter)
