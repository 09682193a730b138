"""The peer directory: where each coordinator can be reached.

Every coordinator publishes one signed record under `mg/dir/<public key
hex>` whose body is its contact (JSON: {"coap": URI, "zone": ..., 
"capabilities": "market,channels"}), and, when it names a zone, the same
body under `mg/zone/<zone>` in its own slot, so a zone's members can be
listed. It re-publishes both every `republish_s` so that they outlive their
TTL and reappear on the surviving nodes after others died. Lookups by key
accept only the record signed by that key: anyone can write under any key,
but nobody else can pose as us.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

log = logging.getLogger("microgrid.overlay.directory")

PREFIX = "mg/dir/"
ZONE_PREFIX = "mg/zone/"


def directory_key(public_hex: str) -> str:
    return PREFIX + public_hex


def zone_key(zone: str) -> str:
    return ZONE_PREFIX + zone


class Directory:
    def __init__(self, overlay: Any, contact: dict[str, str], ttl_s: int = 6 * 3600,
                 republish_s: float = 1800.0) -> None:
        if republish_s >= ttl_s:
            raise ValueError(f"republish_s={republish_s} must be shorter than ttl_s={ttl_s}, or the entry lapses")
        self.overlay = overlay
        self.contact = dict(contact)
        self.ttl_s = ttl_s
        self.republish_s = republish_s
        self.public_hex = overlay.public_key.hex()
        self.published = 0

    async def publish(self) -> bool:
        body = json.dumps(self.contact).encode()
        ok = bool(await self.overlay.put(directory_key(self.public_hex), body, self.ttl_s))
        zone = self.contact.get("zone")
        if zone:
            ok = bool(await self.overlay.put(zone_key(zone), body, self.ttl_s, slot="member")) and ok
        self.published += 1
        return ok

    async def members(self, zone: str) -> dict[str, dict[str, str]]:
        """Public key hex -> contact of every coordinator announcing `zone`."""
        out: dict[str, dict[str, str]] = {}
        for rec in await self.overlay.get(zone_key(zone)):
            try:
                contact = json.loads(rec.body)
            except ValueError:
                continue
            if isinstance(contact, dict) and contact.get("zone") == zone:
                out[rec.publisher.hex()] = {str(k): str(v) for k, v in contact.items()}
        return out

    async def lookup(self, public_hex: str, attempts: int = 3) -> dict[str, str] | None:
        """The contact of the coordinator with this key, or None."""
        publisher = bytes.fromhex(public_hex)
        for attempt in range(attempts):
            # Asked for by name: the storing nodes send only this
            # publisher's values, so a flood under the key cannot hide it,
            # and the read ends at its newest record.
            for rec in await self.overlay.get(directory_key(public_hex), publishers=[publisher]):
                if rec.publisher.hex() != public_hex:
                    continue
                try:
                    contact = json.loads(rec.body)
                except ValueError:
                    continue
                if isinstance(contact, dict):
                    return {str(k): str(v) for k, v in contact.items()}
            await asyncio.sleep(0.05 * (attempt + 1))
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """Publish now and again every `republish_s` until `stop` is set."""
        while not stop.is_set():
            try:
                await self.publish()
            except Exception:  # noqa: BLE001 - a failed put is retried next round
                log.exception("directory publish failed")
            try:
                await asyncio.wait_for(stop.wait(), self.republish_s)
            except asyncio.TimeoutError:
                pass
