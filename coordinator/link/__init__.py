"""The secure link between meters and the coordinator: OSCORE (RFC 8613).

`contexts.py` keeps the security contexts on disk (aiocoap's format, one
directory each: the meters' and the installers'), `guard.py` decides per
resource what an unprotected or a protected request may do, `settings.py`
is the [link] section. aiocoap's OSCORE does the cryptography and the
replay windows; see docs/SECURITY.md.
"""

from __future__ import annotations

import logging
from typing import Any

import aiocoap
import aiocoap.resource as resource
from aiocoap import oscore
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

from .contexts import ContextStore
from .guard import AttemptLimiter, guard_devices, guard_readings
from .settings import LinkSettings

log = logging.getLogger("microgrid.link")

__all__ = ["SecureLink", "LinkSettings", "ContextStore"]


class _Site(OscoreSiteWrapper):
    """aiocoap's wrapper, quiet with hostile input. Its own version reads
    the OSCORE option outside its error handling: a malformed one (an
    11-byte datagram does it) gets 5.00 and a traceback in the log per
    datagram. Here it gets 4.02 Bad Option (RFC 8613 8.2), counted, no
    log line. And it answers /.well-known/edhoc itself, with an ERROR line
    per attempt when no EDHOC credentials exist; we offer no EDHOC
    (contexts come from `microgrid flash`), so the path does not exist,
    quietly."""

    def __init__(self, inner_site: Any, credentials: Any, counts: dict[str, int]) -> None:
        super().__init__(inner_site, credentials)
        self.counts = counts

    async def render_to_pipe(self, pipe: Any) -> None:
        try:
            oscore.verify_start(pipe.request)
        except oscore.NotAProtectedMessage:
            pass
        except (oscore.ProtectionInvalid, ValueError, LookupError, TypeError):
            self.counts["malformed_oscore"] += 1
            if pipe.request.mtype == aiocoap.CON:
                pipe.add_response(aiocoap.Message(code=aiocoap.BAD_OPTION, payload=b"OSCORE option malformed"),
                                  is_last=True)
            return
        await super().render_to_pipe(pipe)

    async def _render_edhoc_to_pipe(self, pipe: Any) -> None:
        pipe.add_response(aiocoap.Message(code=aiocoap.NOT_FOUND, payload=b"EDHOC is not offered"), is_last=True)


class SecureLink:
    """What app.py wires: the contexts, the guards on /readings and
    /devices, and the OSCORE wrapper around the site."""

    def __init__(self, settings: LinkSettings, root: Any) -> None:
        self.settings = settings
        self.contexts = ContextStore(root)
        self.limiter = AttemptLimiter(settings.registration_failures, settings.registration_window_s)
        self.counts: dict[str, int] = {"protected_readings": 0, "unprotected_readings": 0, "refused": 0,
                                       "malformed_oscore": 0}
        if settings.unprotected_readings == "accept":
            log.warning("readings over unprotected CoAP are accepted ([link] unprotected_readings = \"accept\"): "
                        "set it to \"refuse\" once every meter has an OSCORE context")

    def guard(self, readings: resource.Resource, devices: Any) -> None:
        guard_readings(readings, self)
        guard_devices(devices, self)

    def wrap(self, site: resource.Site) -> OscoreSiteWrapper:
        return _Site(site, self.contexts, self.counts)

    def status(self) -> dict[str, Any]:
        return dict(self.counts, contexts=len(self.contexts), locked_out=self.limiter.locked_count())

    def close(self) -> None:
        """Persist every replay window and sequence number (a clean stop
        needs no Echo round trip at the next start)."""
        self.contexts.close()
