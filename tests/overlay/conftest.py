"""Helpers for overlay tests: real OpenDHT nodes on loopback, in-process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from bitcoinx import PrivateKey

from microgrid.coordinator.overlay import OverlaySettings

REPO_ROOT = Path(__file__).resolve().parents[2]
from microgrid.coordinator.overlay.engine import Overlay


async def start_nodes(n: int, seeds: int = 1, overrides: dict[int, dict[str, Any]] | None = None,
                      **settings: Any) -> list[Overlay]:
    """`n` coordinators on loopback; the first `seeds` bootstrap from each
    other, every other node from all seeds. Nodes do not hand over stored
    values on stop unless asked (maintain_storage=True): stopping is then
    instant, and looks like a crash to the others."""
    nodes: list[Overlay] = []
    settings.setdefault("maintain_storage", False)
    for i in range(n):
        boot = [f"127.0.0.1:{s.port}" for s in nodes[:seeds]]
        mine = dict(settings, **(overrides or {}).get(i, {}))
        o = Overlay(PrivateKey.from_random(), OverlaySettings.loopback(bootstrap=boot, **mine))
        await o.start()
        nodes.append(o)
    return nodes


async def stop_all(nodes: list[Overlay]) -> None:
    await asyncio.gather(*(n.stop() for n in nodes))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
