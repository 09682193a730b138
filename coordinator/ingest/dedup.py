"""A bounded duplicate-detection cache for aiocoap's server side.

aiocoap remembers every incoming message id, with the response it sent,
for EXCHANGE_LIFETIME (247 s) so that a retransmitted request is answered
from the cache, and schedules one timer per message to forget it. At
thousands of readings per second that is hundreds of thousands of cached
responses and timers: gigabytes. Readings do not need that cache for
correctness: the store keys them by (device, seq) and answers a repeat
with "duplicate", which the meter counts as delivered. So we keep the
cache as an optimisation, bounded in entries, expired lazily without
timers. Memory is then at most `max_entries` cached responses (about
2.7 KB each), whatever the request rate.

This replaces one method of aiocoap's MessageManager; aiocoap is pinned
below 0.5 and tests/coordinator/test_dedup.py fails if the internals move.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable

import aiocoap
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.types import CON


class BoundedRecentMessages(dict):  # type: ignore[type-arg]
    """(remote, mid) -> cached response or None; insertion-ordered, capped."""

    def __init__(self, max_entries: int, lifetime_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.max_entries = max_entries
        self.lifetime_s = lifetime_s
        self.clock = clock
        self._order: deque[tuple[float, Any]] = deque()
        self.evicted = 0

    def remember(self, key: Any) -> None:
        now = self.clock()
        self.expire(now)
        dict.__setitem__(self, key, None)
        self._order.append((now, key))
        while len(self._order) > self.max_entries:
            _, old = self._order.popleft()
            if dict.pop(self, old, None) is not None:
                self.evicted += 1

    def expire(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        order = self._order
        while order and order[0][0] + self.lifetime_s < now:
            _, old = order.popleft()
            dict.pop(self, old, None)

    def pop(self, key: Any, *default: Any) -> Any:  # tolerate aiocoap's timers, if any
        return dict.pop(self, key, None)


def bound_duplicate_cache(context: aiocoap.Context, max_entries: int, lifetime_s: float = 247.0) -> list[BoundedRecentMessages]:
    """Install the bounded cache on every UDP message manager of `context`."""
    caches = []
    for interface in context.request_interfaces:
        manager = getattr(interface, "token_interface", None)
        if not isinstance(manager, MessageManager):
            continue
        cache = BoundedRecentMessages(max_entries, lifetime_s)
        manager._recent_messages = cache

        def deduplicate(message: aiocoap.Message, manager: MessageManager = manager, cache: BoundedRecentMessages = cache) -> bool:
            key = (message.remote, message.mid)
            cache.expire()
            if key in cache:
                cached = dict.get(cache, key)
                if message.mtype is CON and cached is not None:
                    manager._send_initially(cached)
                return True
            cache.remember(key)
            return False

        manager._deduplicate_message = deduplicate  # type: ignore[method-assign]
        caches.append(cache)
    if not caches:
        raise RuntimeError("aiocoap internals changed: no MessageManager found to bound its duplicate cache")
    return caches
