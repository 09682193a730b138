"""Load for a coordinator: many simulated meters sending signed readings.

Each `SimulatedSender` is one meter with its own UDP socket, sending
confirmable CoAP POSTs one at a time (NSTART = 1), as the firmware does. It
signs with bitcoinx (fast), producing exactly the message the firmware
would. Used by the ingest benchmark and by the tests that stop a
coordinator under load; it records which readings were acknowledged.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time

from bitcoinx import PrivateKey

from microgrid.edge import coap
from microgrid.shared import cose, reading


class SimulatedSender:
    def __init__(self, rng: random.Random, t0: int = 1_700_000_000) -> None:
        self.key = PrivateKey(rng.randbytes(32))
        self.public_key = self.key.public_key.to_bytes(compressed=True)
        self.device_id = reading.device_id(self.public_key)
        self.protected = cose.encode_protected(reading.ALG_ES256K, reading.key_id(self.public_key))
        self.seq = 0
        self.t0 = t0
        self.mid = rng.randrange(65536)
        self.acked: list[int] = []  # sequence numbers answered 2.01 (or "duplicate")
        self.timeouts = 0

    def next_message(self) -> bytes:
        self.seq += 1
        payload = reading.encode_payload(self.device_id, self.seq, self.t0 + self.seq, self.seq, 0, 100, 230.0)
        sig = self.key.sign_recoverable(cose.sig_structure(self.protected, payload))[:64]
        return cose.build(self.protected, payload, sig)

    async def run(self, port: int, deadline: float, host: str = "127.0.0.1", ack_timeout_s: float = 2.0) -> None:
        """Send readings until `deadline` (time.monotonic()); a reading that
        times out is abandoned (a real meter would keep it and retry)."""
        loop = asyncio.get_running_loop()
        opts = [(coap.OPT_URI_PATH, b"readings"), (coap.OPT_CONTENT_FORMAT, b"\x12")]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect((host, port))
        try:
            while time.monotonic() < deadline:
                self.mid = (self.mid + 1) & 0xFFFF
                token = self.mid.to_bytes(2, "big")
                datagram = coap.encode(coap.CON, coap.POST, self.mid, token, opts, self.next_message())
                try:
                    await loop.sock_sendall(sock, datagram)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                while True:
                    try:
                        data = await asyncio.wait_for(loop.sock_recv(sock, 2048), ack_timeout_s)
                    except (asyncio.TimeoutError, ConnectionRefusedError, OSError):
                        self.timeouts += 1
                        break
                    got = coap.decode(data)
                    if got and got[2] == self.mid and got[0] == coap.ACK and got[3] == token:
                        code, payload = got[1], got[4]
                        if code == 65 or (code == 137 and payload.startswith(b"duplicate")):
                            self.acked.append(self.seq)
                        break
        finally:
            sock.close()


async def drive(senders: list[SimulatedSender], port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(s.run(port, deadline) for s in senders))
