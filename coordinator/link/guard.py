"""Who may do what on /readings and /devices, by the OSCORE context a
request came through (or none).

- /readings: a meter's context may post that meter's readings only (the
  signed reading names its device; another meter's is 4.03). Unprotected
  readings follow [link] unprotected_readings: accepted while meters are
  migrated, else 4.01 and not stored.
- POST /devices: an installer's context registers a meter without a token
  and, when the body asks {"oscore": true}, gets the meter's new context in
  the (encrypted) answer. Unprotected registration with the installer
  token follows [link] unprotected_registration. Every failed registration
  counts against its source address; past `registration_failures` within
  `registration_window_s` the address gets 4.29 until the window passes,
  whatever it sends (guessing the token at 1,131 tries/s becomes 5 tries
  per 10 minutes).

The guards replace the resources' render_post; aiocoap dispatches to it
by name, so the resources themselves stay as they are.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import aiocoap
from aiocoap.numbers.codes import Code

from microgrid.shared import cbor
from microgrid.shared import reading as reading_format

if TYPE_CHECKING:
    from . import SecureLink

log = logging.getLogger("microgrid.link")

MAX_SOURCES = 4096  # addresses remembered by the limiter (oldest forgotten first)


class AttemptLimiter:
    """Failures per source within a sliding window; memory bounded."""

    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, source: str) -> deque[float]:
        now = self.clock()
        q = self._failures.get(source)
        if q is None:
            return deque()
        while q and q[0] + self.window_s <= now:
            q.popleft()
        if not q:
            del self._failures[source]
        return q

    def wait_s(self, source: str) -> float:
        """0 when `source` may try, else the seconds until it may."""
        q = self._recent(source)
        if len(q) < self.max_failures:
            return 0.0
        return max(0.0, q[0] + self.window_s - self.clock())

    def fail(self, source: str) -> None:
        q = self._recent(source)
        q.append(self.clock())
        self._failures[source] = q
        self._failures.move_to_end(source)
        while len(self._failures) > MAX_SOURCES:
            self._failures.popitem(last=False)

    def locked_count(self) -> int:
        return sum(1 for s in list(self._failures) if self.wait_s(s) > 0)


def sender(request: aiocoap.Message) -> tuple[str, str] | None:
    """("meter", device id) or ("installer", name) for a request that came
    through OSCORE, None for plain CoAP."""
    ctx = getattr(request.remote, "security_context", None)
    return getattr(ctx, "microgrid_owner", None) if ctx is not None else None


def source(request: aiocoap.Message) -> str:
    remote = getattr(request.remote, "underlying_address", None) or request.remote
    try:
        host = remote.hostinfo
    except Exception:  # noqa: BLE001 - an address without host info
        return "?"
    # host:port -> host (the port changes with every client socket)
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _answer(code: Code, text: str) -> aiocoap.Message:
    return aiocoap.Message(code=code, payload=text.encode()[:200])


def guard_readings(res: Any, link: "SecureLink") -> None:
    inner: Callable[[aiocoap.Message], Awaitable[aiocoap.Message]] = res.render_post

    async def render_post(request: aiocoap.Message) -> aiocoap.Message:
        who = sender(request)
        if who is None:
            if link.settings.unprotected_readings == "refuse":
                link.counts["refused"] += 1
                return _answer(Code.UNAUTHORIZED, "readings need OSCORE: provision the meter's context with microgrid flash")
            link.counts["unprotected_readings"] += 1
            return await inner(request)
        if who[0] != "meter":
            link.counts["refused"] += 1
            return _answer(Code.FORBIDDEN, f"the {who[0]} context {who[1]} cannot post readings")
        try:
            device = reading_format.parse_all(request.payload)[0].device
        except Exception:  # noqa: BLE001 - malformed: the ingest core answers 4.00 with the reason
            device = who[1]
        if device != who[1]:
            link.counts["refused"] += 1
            return _answer(Code.FORBIDDEN, f"meter {who[1]}'s context cannot post readings of {device}")
        link.counts["protected_readings"] += 1
        return await inner(request)

    res.render_post = render_post


def guard_devices(res: Any, link: "SecureLink") -> None:
    from ..ingest.devices import Answer, response

    registry = res.registry
    inner: Callable[[aiocoap.Message], Awaitable[aiocoap.Message]] = res.render_post

    async def render_post(request: aiocoap.Message) -> aiocoap.Message:
        where = source(request)
        wait = link.limiter.wait_s(where)
        if wait > 0:
            return _answer(Code.TOO_MANY_REQUESTS,
                           f"too many failed registrations from {where}: try again in {int(wait) + 1} s")
        who = sender(request)
        if who is None:
            if link.settings.unprotected_registration == "refuse":
                link.limiter.fail(where)
                return _answer(Code.UNAUTHORIZED, "registration needs the installer's OSCORE context "
                                                  "(microgrid flash --installer-context DIR)")
            answer = await inner(request)
            if answer.code.is_successful():
                return answer
            link.limiter.fail(where)
            return answer
        if who[0] != "installer":
            link.limiter.fail(where)
            return _answer(Code.FORBIDDEN, f"a {who[0]}'s context cannot register devices")
        want_context = False
        body = request.payload
        try:
            doc = cbor.loads(bytes(body))
            if isinstance(doc, dict) and "oscore" in doc:
                want_context = doc.pop("oscore") is True
                body = cbor.dumps(doc)
        except ValueError:
            pass  # the registry answers 4.00 with the reason
        got: Answer = registry.register(body, authenticated=True)
        if not got.ok:
            link.limiter.fail(where)
            return response(got)
        if want_context and got.body is not None:
            try:
                ctx = link.contexts.meter_context(got.body["device_id"])
            except (ValueError, OSError) as e:
                log.error("OSCORE context for %s not made: %s", got.body["device_id"], e)
                return _answer(Code.INTERNAL_SERVER_ERROR, "the meter's OSCORE context could not be made; see the log")
            got = Answer(got.code, got.diagnostic, dict(got.body, oscore=ctx))
        log.info("device %s registered by installer %s over OSCORE", got.body["device_id"] if got.body else "?", who[1])
        return response(got)

    res.render_post = render_post
