"""Limits on what one source may cost the coordinator.

- `SourceLimiter`: a token bucket per source address (rate and burst from
  `[ingest] rate_per_source` / `burst_per_source`), in a table of at most
  `max_sources` entries (least recently seen forgotten first), so a flood
  from many spoofed addresses costs bounded memory. Addresses in
  `[ingest] rate_exempt` (loopback by default: local processes) are not
  counted. Bad input (a datagram that is not CoAP, a request answered
  4.00-4.05, 4.13 or 4.15: `watch_answers`) costs its source PENALTY
  requests more, so a fuzzer is slowed to a few datagrams a second while
  an honest meter, whose requests succeed, keeps the whole rate.
- `guard_udp`: in front of aiocoap's UDP receive path. A datagram over its
  source's rate is dropped before it is decoded (no answer: an answer to a
  spoofed address would be a reflection); a datagram aiocoap cannot decode
  (a non-UTF-8 Uri-Path raised UnicodeDecodeError out of aiocoap and wrote
  a 1.9 KB traceback per datagram) is dropped with one line, never a
  traceback. The lines collapse per kind and period (logs.RateLimitFilter).
- `block1_refusal`: a block-wise upload (RFC 7959) whose announced size
  (Size1) or next block ends past the resource's message limit is refused
  with 4.13 and Size1 = the limit at that block, before aiocoap
  reassembles it (128 sources x 400 KiB took RSS from 49 to 126 MB).

This wraps one method of aiocoap's UDP transport (pinned below 0.5, as in
dedup.py); tests/coordinator/test_hostile.py fails if the internals move.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable

import aiocoap
from aiocoap.numbers.codes import Code

log = logging.getLogger("microgrid.ingest.limits")

# Requests a bad one costs its source beyond itself: a datagram that is not
# CoAP, or a request answered 4.00-4.05, 4.13 or 4.15 (not 4.09: duplicates
# and stale readings come from honest meters too).
PENALTY = 10.0
PENALISED_CODES = frozenset({128, 129, 130, 131, 132, 133, 141, 143})

# Bytes of kernel buffer asked for the UDP socket (SO_RCVBUF).
RECEIVE_BUFFER = 4 * 1024 * 1024


def address_forms(addresses: Iterable[str]) -> frozenset[str]:
    """Each address as aiocoap's dual-stack UDP socket reports it: IPv4 also
    as its IPv4-mapped IPv6 form."""
    out: set[str] = set()
    for text in addresses:
        ip = ipaddress.ip_address(text)
        out.add(str(ip))
        if ip.version == 4:
            out.add(f"::ffff:{ip}")
    return frozenset(out)


class SourceLimiter:
    """Token buckets per source address, bounded in number."""

    def __init__(self, rate: float, burst: float, max_sources: int = 4096, exempt: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic, penalty: float = PENALTY) -> None:
        self.rate = rate
        self.penalty = penalty
        self.burst = burst
        self.max_sources = max_sources
        self.exempt = address_forms(exempt)
        self.clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self.dropped = 0

    def allow(self, host: str) -> bool:
        if self.rate <= 0 or host in self.exempt:
            return True
        now = self.clock()
        bucket = self._buckets.get(host)
        if bucket is None:
            bucket = [self.burst, now]
            self._buckets[host] = bucket
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(host)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        self.dropped += 1
        return False

    def penalise(self, host: str) -> None:
        """`host` sent bad input: it costs `penalty` requests more, so a
        source that sends nothing else gets rate / (1 + penalty) through."""
        bucket = self._buckets.get(host)
        if bucket is not None and host not in self.exempt:
            bucket[0] = max(-self.burst, bucket[0] - self.penalty)

    def __len__(self) -> int:
        return len(self._buckets)


class UdpGuard:
    """Counts of what the guard in front of aiocoap's UDP socket dropped."""

    def __init__(self, limiter: SourceLimiter) -> None:
        self.limiter = limiter
        self.counts = {"rate_limited": 0, "undecodable": 0}

    def wrap(self, received: Callable[..., None]) -> Callable[..., None]:
        def guarded(data: bytes, ancdata: Any, flags: int, address: Any) -> None:
            host = str(address[0])
            if not self.limiter.allow(host):
                self.counts["rate_limited"] += 1
                log.warning("datagrams from %s over [ingest] rate_per_source: dropped", host)
                return
            # Not CoAP at all (RFC 7252 3: version 1, token length <= 8,
            # code class 0 or 2-5): dropped before aiocoap decodes it.
            if len(data) < 4 or data[0] >> 6 != 1 or data[0] & 0x0F > 8 or data[1] >> 5 in (1, 6, 7):
                self.counts["undecodable"] += 1
                self.limiter.penalise(host)
                log.warning("datagram from %s that is not CoAP dropped", host)
                return
            try:
                received(data, ancdata, flags, address)
            except Exception as e:  # noqa: BLE001 - bad input must not write tracebacks
                self.counts["undecodable"] += 1
                self.limiter.penalise(host)
                log.warning("undecodable datagram from %s dropped (%s)", host, type(e).__name__)

        return guarded


def guard_udp(context: aiocoap.Context, limiter: SourceLimiter) -> UdpGuard:
    """Put a `UdpGuard` in front of every UDP socket of `context`."""
    from aiocoap.messagemanager import MessageManager
    from aiocoap.transports.udp6 import MessageInterfaceUDP6

    guard = UdpGuard(limiter)
    found = 0
    for interface in context.request_interfaces:
        manager = getattr(interface, "token_interface", None)
        if not isinstance(manager, MessageManager):
            continue
        udp = getattr(manager, "message_interface", None)
        if isinstance(udp, MessageInterfaceUDP6):
            udp.datagram_msg_received = guard.wrap(udp.datagram_msg_received)  # type: ignore[method-assign]
            _enlarge_receive_buffer(udp.transport.get_extra_info("socket"))
            found += 1
    if not found:
        raise RuntimeError("aiocoap internals changed: no UDP message interface found to guard")
    return guard


def _enlarge_receive_buffer(sock: Any) -> None:
    """A burst of datagrams (a flood, or the coordinator descheduled for a
    moment on a busy 2-core board) must not overflow the kernel's buffer
    and drop honest readings with it: ask for RECEIVE_BUFFER bytes. The
    kernel caps it at net.core.rmem_max (212992 on Raspberry Pi OS: the
    README's sysctl raises it)."""
    if sock is None:
        return
    import socket

    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports double
    except OSError as e:
        log.warning("cannot enlarge the UDP receive buffer: %s", e.strerror)
        return
    if got < RECEIVE_BUFFER:
        log.info("UDP receive buffer %d bytes (asked %d): raise net.core.rmem_max to absorb floods", got,
                 RECEIVE_BUFFER)


def source_host(remote: Any) -> str | None:
    """The address a UDP request came from, as the limiter keys it."""
    sockaddr = getattr(remote, "sockaddr", None)
    return str(sockaddr[0]) if sockaddr else None


def watch_answers(pipe: Any, limiter: SourceLimiter) -> None:
    """Penalise the source of `pipe`'s request if it is answered with a
    code of PENALISED_CODES (whichever resource, or aiocoap, answers)."""
    host = source_host(pipe.request.remote)
    if host is None or host in limiter.exempt:
        return
    add_response = pipe.add_response

    def watched(response: Any, is_last: bool = False) -> None:
        if response.code is not None and int(response.code) in PENALISED_CODES:
            limiter.penalise(host)
        add_response(response, is_last=is_last)

    pipe.add_response = watched


def block1_refusal(request: aiocoap.Message, limit: int) -> aiocoap.Message | None:
    """4.13 for a block-wise upload that would end past `limit` bytes
    (RFC 7959 2.9.3: Size1 tells the largest size accepted), else None."""
    block1 = request.opt.block1
    if block1 is None:
        return None
    announced = request.opt.size1
    end = block1.start + len(request.payload)
    if end <= limit and (announced is None or announced <= limit):
        return None
    size = announced if announced is not None and announced > limit else end
    answer = aiocoap.Message(code=Code.REQUEST_ENTITY_TOO_LARGE,
                             payload=f"request of {size}+ bytes: this resource takes at most {limit}".encode())
    answer.opt.size1 = limit
    return answer
