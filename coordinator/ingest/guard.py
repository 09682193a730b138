"""The coordinator's CoAP site with its doors: deny by default.

Every request passes here before any resource sees it:

0. its answer is watched: bad input slows its source (limits.watch_answers);
1. a block-wise upload past the resource's message limit gets 4.13 before
   it is reassembled (limits.block1_refusal);
2. unless its (path, method) is in OPEN, it needs credentials
   (access.Access): 4.01 with the reason otherwise. A resource added later
   is closed until it is listed here (or granted: `grant` lets the installer
token read a registration, GET /devices?id=).

OPEN holds what must work without an application's credentials: meters
post signed readings, installers register keys (installer token inside),
peer coordinators exchange signed channel messages and fetch each other's
signed live totals, anyone may ask
`/.well-known/core` what is served and `/health` whether the coordinator
is alive (without credentials it answers only {"status": "ok"}).
"""

from __future__ import annotations

from typing import Any, Callable

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers.codes import Code

from .access import Access
from .limits import SourceLimiter, block1_refusal, watch_answers

OPEN: dict[tuple[str, ...], frozenset[str]] = {
    (".well-known", "core"): frozenset({"GET"}),
    ("readings",): frozenset({"POST"}),
    ("health",): frozenset({"GET"}),
    ("devices",): frozenset({"POST"}),
    ("channel",): frozenset({"POST"}),
    # A coordinator's signed live totals (trading/live.py): the record
    # proves itself; counterparties fetch it without credentials.
    ("live",): frozenset({"GET"}),
}
# Firmware releases (coordinator/updates/): images and manifests are signed
# and hashed, reports are signed with the meter's key; meters and peer
# coordinators fetch them without an application's credentials.
OPEN_PREFIXES: dict[tuple[str, ...], frozenset[str]] = {
    ("fw",): frozenset({"GET", "POST"}),
}


def is_open(path: tuple[str, ...], method: str) -> bool:
    return method in OPEN.get(path, ()) or method in OPEN_PREFIXES.get(path[:1], ())


class GuardedSite(resource.Site):
    def __init__(self, access: Access, max_request_bytes: int, limits: dict[tuple[str, ...], int] | None = None,
                 limiter: SourceLimiter | None = None) -> None:
        super().__init__()
        self.access = access
        self.limiter = limiter
        self.max_request_bytes = max_request_bytes
        self.limits = dict(limits or {})
        self._grants: dict[tuple[tuple[str, ...], str], Callable[[Any], bool]] = {}

    def grant(self, path: tuple[str, ...], method: str, check: Callable[[Any], bool]) -> None:
        """Besides an application's credentials, `check(request)` true lets
        `method` on `path` through (e.g. the installer token on GET /devices)."""
        self._grants[(tuple(path), method)] = check

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        if self.limiter is not None:
            watch_answers(pipe, self.limiter)
        path = tuple(request.opt.uri_path)
        limit = self.limits.get(path, self.max_request_bytes)
        refusal = block1_refusal(request, limit)
        method = str(request.code)
        if refusal is None and not is_open(path, method):
            grant = self._grants.get((path, method))
            if grant is not None and grant(request):
                await super().render_to_pipe(pipe)
                return
            decision = self.access.decide(request)
            if not decision.allowed:
                refusal = aiocoap.Message(code=Code.UNAUTHORIZED, payload=decision.why.encode()[:200])
        if refusal is not None:
            pipe.add_response(refusal, is_last=True)
            return
        await super().render_to_pipe(pipe)
