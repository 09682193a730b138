# Minimal confirmable CoAP client (RFC 7252) for the meter.
#
# One exchange at a time (NSTART = 1). A POST is retransmitted with the
# RFC's exponential backoff until an ACK arrives; the response may come
# piggybacked on the ACK or separately (an empty ACK first, then a CON or
# NON response carrying our token, which we acknowledge). Message ids and
# tokens start from random values at boot, because aiocoap treats a reused
# message id from the same address within its exchange lifetime as a
# duplicate and would answer with a cached ACK for some earlier reading.
#
# The client never stops the board for the network. The coordinator's name
# is resolved when a message is first sent, not when the client is made
# (at boot Wi-Fi may not be up yet): a failure is a CoAPError like any
# other, retried by the caller, and the address is looked up again after
# an exchange that got no answer (the name may point elsewhere now). While
# it waits for an answer the client calls `idle(ms, sock)` instead of
# blocking: the firmware runs its console and feeds the watchdog there, and
# returns as soon as the socket is readable. `idle` returning True stops
# the exchange with Interrupted (the console needs the loop: reboot, reset);
# the message stays queued and is sent again, byte for byte, later.

import os
import select
import socket
import struct

from . import ticks

CON = 0
NON = 1
ACK = 2
RST = 3

POST = 2
OPT_URI_PATH = 11
OPT_CONTENT_FORMAT = 12

RANDOM_FACTOR = 1.5
# The largest datagram the meter takes: a 512-byte Block2 block of a
# firmware update (edge/ota_session.py) with its header and options, an
# OSCORE-protected answer to a reading, all well under it. Smaller than the
# RFC's 1152 because recvfrom allocates this much for every datagram,
# which must find a free run of its size in a 48 KB heap (MicroPython has
# no recv_into for datagrams); one that fills it may have been cut short
# and is dropped, as one the meter cannot take.
RECV_MAX = 640


class CoAPError(OSError):
    pass


class Interrupted(Exception):
    """The idle callback asked to stop waiting (not a network failure: the
    message was not refused and goes out again later)."""


def code_str(code):
    return "%d.%02d" % (code >> 5, code & 31)


def _opt_field(n):
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes([n - 13])
    return 14, struct.pack(">H", n - 269)


def encode(mtype, code, mid, token, options, payload):
    """options: list of (number, bytes) in ascending number order."""
    out = bytearray()
    out.append(0x40 | (mtype << 4) | len(token))
    out.append(code)
    out.extend(struct.pack(">H", mid))
    out.extend(token)
    last = 0
    for num, val in options:
        d, dx = _opt_field(num - last)
        l, lx = _opt_field(len(val))
        out.append((d << 4) | l)
        out.extend(dx)
        out.extend(lx)
        out.extend(val)
        last = num
    if payload:
        out.append(0xFF)
        out.extend(payload)
    return bytes(out)


def decode(data):
    """(type, code, mid, token, payload's offset) or None if the datagram
    is not a well-formed CoAP message (it is then ignored, as RFC 7252
    asks). The payload is not copied: only an answer that is ours is
    (Client.post)."""
    if len(data) < 4:
        return None
    b0 = data[0]
    if b0 >> 6 != 1:
        return None
    tkl = b0 & 0x0F
    if tkl > 8 or len(data) < 4 + tkl:
        return None
    mtype = (b0 >> 4) & 3
    code = data[1]
    mid = (data[2] << 8) | data[3]
    token = bytes(data[4:4 + tkl])
    i = 4 + tkl
    # Skip options; we need none from responses.
    while i < len(data):
        if data[i] == 0xFF:
            return mtype, code, mid, token, i + 1
        d = data[i] >> 4
        l = data[i] & 0x0F
        i += 1
        if d == 15 or l == 15:
            return None
        if d == 13:
            i += 1
        elif d == 14:
            i += 2
        if l == 13:
            l = data[i] + 13 if i < len(data) else 0
            i += 1
        elif l == 14:
            if i + 1 >= len(data):
                return None
            l = ((data[i] << 8) | data[i + 1]) + 269
            i += 2
        i += l
    if i > len(data):
        return None
    return mtype, code, mid, token, len(data)


class Client:
    def __init__(self, host, port, ack_timeout_s=2.0, max_retransmit=4, local_port=0, idle=None):
        self.host = host
        self.port = port
        self.addr = None  # resolved on first use (see the module comment)
        self.idle = idle
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN)
        if local_port:
            self.sock.bind(socket.getaddrinfo("0.0.0.0", local_port)[0][-1])
        self.ack_timeout_ms = int(ack_timeout_s * 1000)
        self.max_retransmit = max_retransmit
        r = os.urandom(6)
        self.mid = (r[0] << 8) | r[1]
        self.token_base = bytes(r[2:6])
        self.token_counter = 0
        self.retransmissions = 0
        self.datagram = b""
        self.view = False

    def close(self):
        self.sock.close()

    def retarget(self, host, port):
        """Send to another coordinator from the next message on."""
        self.host = host
        self.port = port
        self.addr = None

    def _address(self):
        if self.addr is None:
            try:
                self.addr = socket.getaddrinfo(self.host, self.port)[0][-1]
            except (OSError, IndexError) as e:
                raise CoAPError("cannot resolve coordinator host %r: %s" % (self.host, e))
        return self.addr

    def _next_mid(self):
        self.mid = (self.mid + 1) & 0xFFFF
        return self.mid

    def _next_token(self):
        self.token_counter = (self.token_counter + 1) & 0xFFFFFFFF
        c = self.token_counter
        t = self.token_base
        return bytes([t[0] ^ (c >> 24) & 255, t[1] ^ (c >> 16) & 255, t[2] ^ (c >> 8) & 255, t[3] ^ c & 255])

    def _recv(self, timeout_ms):
        if timeout_ms <= 0:
            return None
        if self.idle is not None:
            # Wait in the idle callback (console, watchdog), at most a
            # quarter of a second at a time, until the socket is readable.
            start = ticks.ticks_ms()
            while not self._readable():
                left = timeout_ms - ticks.since(start)
                if left <= 0:
                    return None
                if self.idle(int(min(left, 250)), self.sock):
                    raise Interrupted("exchange stopped for the console")
            timeout_ms = 1
        self.sock.settimeout(timeout_ms / 1000)
        try:
            data, addr = self.sock.recvfrom(RECV_MAX)
            self.datagram = data  # for a `protect` hook (edge/oscore.py), and the payload
        except OSError:
            # A timeout is OSError(EAGAIN/ETIMEDOUT) on MicroPython and
            # socket.timeout (an OSError) on CPython; a refused port (ICMP)
            # can also surface here. Either way: nothing received.
            return None
        if addr != self.addr:
            # Only the coordinator answers our exchanges: a datagram from
            # any other address (a spoofed 4.09 telling the meter to jump
            # its sequence, say) is ignored as if never received.
            return None
        if len(data) >= RECV_MAX:
            return None  # perhaps cut short: not a message we can take
        return decode(data)

    def _payload(self, at):
        # The answer's payload (from offset `at`): a view into the datagram
        # when the caller asked for one (no copy: the updater's blocks),
        # else bytes.
        if self.view:
            return memoryview(self.datagram)[at:]
        return self.datagram[at:]

    def _readable(self):
        return bool(self.poller.poll(0))

    def post(self, path, payload, content_format=None, method=POST, more=(), protect=None, view=False):
        """Send a confirmable POST; return (code, payload) of the response.
        Raises CoAPError when the host does not resolve, when no
        acknowledgement arrives after the last retransmission, or when the
        server resets the exchange; Interrupted when `idle` asked to stop.
        `protect` (edge/oscore.py's Link) encrypts the request and judges
        each answer: one it returns None for is ignored, as if never
        received. `view`: the answer's payload as a memoryview into the
        datagram instead of a copy (valid until the next exchange)."""
        self.view = view
        self.datagram = b""  # the last answer's datagram freed before this one's arrives
        addr = self._address()
        mid = self._next_mid()
        token = self._next_token()
        if protect is not None:
            options, payload = protect.request(path, payload, content_format)
        else:
            options = []
            for seg in path.strip("/").split("/"):
                options.append((OPT_URI_PATH, seg.encode()))
            if content_format is not None:
                cf = bytes([content_format]) if content_format < 256 else struct.pack(">H", content_format)
                options.append((OPT_CONTENT_FORMAT, cf))
            # `method`, `more` (options numbered above 12, e.g. Block2): the
            # firmware updater's block-wise GET (edge/ota.py), unprotected:
            # what it fetches is signed and hashed.
            options.extend(more)
        msg = encode(CON, method if protect is None else POST, mid, token, options, payload)
        # Protected, `payload` is the ciphertext, now copied into msg: not
        # kept twice in RAM while the exchange waits (edge/oscore.py).
        options = payload = None
        # Initial timeout between ACK_TIMEOUT and ACK_TIMEOUT * RANDOM_FACTOR.
        r = os.urandom(1)[0]
        timeout = self.ack_timeout_ms + int(self.ack_timeout_ms * (RANDOM_FACTOR - 1) * r) // 255
        acked = False
        for attempt in range(self.max_retransmit + 1):
            if attempt:
                self.retransmissions += 1
            try:
                self.sock.sendto(msg, addr)
            except OSError:
                pass
            start = ticks.ticks_ms()
            while True:
                left = timeout - ticks.since(start)
                got = self._recv(left)
                if got is None:
                    if left <= 0 or ticks.since(start) >= timeout:
                        break
                    continue
                mtype, code, rmid, rtoken, at = got
                if mtype == RST and rmid == mid:
                    raise CoAPError("coordinator reset the exchange")
                if mtype == ACK and rmid == mid:
                    if code == 0:
                        acked = True
                        break
                    if rtoken == token:
                        if protect is None:
                            return code, self._payload(at)
                        got = protect.response(self.datagram)
                        if got is not None:
                            return got
                    # A cached ACK for someone else's token, or not
                    # protected for us: not ours.
                    continue
                if rtoken == token and mtype in (CON, NON) and code >= 64:
                    if mtype == CON:
                        self.sock.sendto(encode(ACK, 0, rmid, b"", [], b""), addr)
                    got = (code, self._payload(at)) if protect is None else protect.response(self.datagram)
                    if got is not None:
                        return got
                    continue
                if mtype == CON:
                    # Unknown confirmable message: reject it.
                    self.sock.sendto(encode(RST, 0, rmid, b"", [], b""), addr)
            if acked:
                break
            timeout *= 2
        if not acked:
            self.addr = None  # look the name up again next time
            raise CoAPError("no acknowledgement after %d transmissions" % (self.max_retransmit + 1))
        # Empty ACK received: the response follows separately.
        wait = self.ack_timeout_ms * 16
        start = ticks.ticks_ms()
        while ticks.since(start) < wait:
            got = self._recv(wait - ticks.since(start))
            if got is None:
                continue
            mtype, code, rmid, rtoken, at = got
            # Protected, the real piggybacked answer still counts after an
            # empty ACK (a forged one must not make us miss it).
            late = protect is not None and mtype == ACK and rmid == mid
            if rtoken == token and (mtype in (CON, NON) or late) and code >= 64:
                if mtype == CON:
                    self.sock.sendto(encode(ACK, 0, rmid, b"", [], b""), addr)
                got = (code, self._payload(at)) if protect is None else protect.response(self.datagram)
                if got is not None:
                    return got
        raise CoAPError("acknowledged but no response within %d ms" % wait)
