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

import aiocoap.resource as resource
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

from .contexts import ContextStore
from .guard import AttemptLimiter, guard_devices, guard_readings
from .settings import LinkSettings

log = logging.getLogger("microgrid.link")

__all__ = ["SecureLink", "LinkSettings", "ContextStore"]


class SecureLink:
    """What app.py wires: the contexts, the guards on /readings and
    /devices, and the OSCORE wrapper around the site."""

    def __init__(self, settings: LinkSettings, root: Any) -> None:
        self.settings = settings
        self.contexts = ContextStore(root)
        self.limiter = AttemptLimiter(settings.registration_failures, settings.registration_window_s)
        self.counts: dict[str, int] = {"protected_readings": 0, "unprotected_readings": 0, "refused": 0}
        if settings.unprotected_readings == "accept":
            log.warning("readings over unprotected CoAP are accepted ([link] unprotected_readings = \"accept\"): "
                        "set it to \"refuse\" once every meter has an OSCORE context")

    def guard(self, readings: resource.Resource, devices: Any) -> None:
        guard_readings(readings, self)
        guard_devices(devices, self)

    def wrap(self, site: resource.Site) -> OscoreSiteWrapper:
        return OscoreSiteWrapper(site, self.contexts)

    def status(self) -> dict[str, Any]:
        return dict(self.counts, contexts=len(self.contexts), locked_out=self.limiter.locked_count())

    def close(self) -> None:
        """Persist every replay window and sequence number (a clean stop
        needs no Echo round trip at the next start)."""
        self.contexts.close()
