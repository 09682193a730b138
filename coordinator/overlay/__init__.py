"""The coordinators' overlay: signed records on a private OpenDHT network.

    from microgrid.coordinator.overlay import Overlay, MemoryOverlay, MemoryNetwork

    overlay = Overlay(private_key, OverlaySettings(...))   # real OpenDHT node
    await overlay.start()
    await overlay.put("mg/zone/zone-7", body, ttl_s=600, slot="member")  # signed with our key
    for rec in await overlay.get("mg/zone/zone-7"):                     # verified records only
        rec.publisher, rec.body
    handle = overlay.listen("mg/market/zone-7/1750000500", callback)    # keys: SPEC.md
    handle.cancel()
    overlay.peers()
    await overlay.stop()

Only engine.py imports opendht; importing this package does not load it
until `Overlay` is used.
"""

from __future__ import annotations

from typing import Any

from .interface import BaseOverlay, ListenHandle, OverlayError, PeerInfo
from .memory import MemoryNetwork, MemoryOverlay
from .records import RecordError, SignedRecord
from .settings import DEFAULT_NETWORK_ID, OverlaySettings, OverlaySettingsError

__all__ = [
    "BaseOverlay", "ListenHandle", "MemoryNetwork", "MemoryOverlay", "Overlay", "OverlayError",
    "OverlaySettings", "OverlaySettingsError", "PeerInfo", "RecordError", "SignedRecord",
    "DEFAULT_NETWORK_ID",
]


def __getattr__(name: str) -> Any:
    if name == "Overlay":  # lazily: unit tests on MemoryOverlay never load OpenDHT
        from .engine import Overlay

        return Overlay
    raise AttributeError(name)
