"""Logging for a headless appliance.

Under systemd (JOURNAL_STREAM is set) each line starts with a syslog
priority prefix such as "<4>", which journald turns into the entry's
priority, so `journalctl -p warning -u microgrid-coordinator` works; the
journal adds its own timestamps. On a terminal, lines carry a timestamp.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import OrderedDict
from typing import Any, Callable

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = f"<{prio}>{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info).replace("\n", f"\n<{prio}>")
        return text


class RateLimitFilter(logging.Filter):
    """One line per kind of message per period, with counts.

    A kind is (logger, level, message template): "reading rejected %s: %s"
    from a fuzzer is one kind however many datagrams it sends. The first
    line of a kind in a period is written; the others are counted, and the
    next line of the kind written says how many were suppressed (as does
    `summaries()`, which the coordinator logs once a period, so a burst
    that stops is still reported). Tracebacks are kept only on written
    lines. Bounded: at most `max_kinds` kinds are tracked (the oldest
    forgotten first)."""

    def __init__(self, period_s: float = 60.0, max_kinds: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.period_s = period_s
        self.max_kinds = max_kinds
        self.clock = clock
        # kind -> [start of its period, lines suppressed in it]
        self._kinds: OrderedDict[tuple[str, int, str], list[Any]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        # Several handlers share this filter: decide once per record.
        decided = getattr(record, "_rate_limited", None)
        if decided is not None:
            return not decided
        keep = self._decide(record)
        record._rate_limited = not keep
        return keep

    def _decide(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        state = self._kinds.get(kind)
        if state is not None and now - state[0] < self.period_s:
            state[1] += 1
            return False
        if state is not None and state[1]:
            record.msg = f"{record.msg} [{state[1]} more like this suppressed in {now - state[0]:.0f} s]"
        self._kinds[kind] = [now, 0]
        self._kinds.move_to_end(kind)
        while len(self._kinds) > self.max_kinds:
            self._kinds.popitem(last=False)
        return True

    def summaries(self) -> list[str]:
        """Lines for the kinds whose period ended with lines suppressed (each
        reported once)."""
        now = self.clock()
        out = []
        for (name, _level, msg), state in self._kinds.items():
            if state[1] and now - state[0] >= self.period_s:
                out.append(f"{state[1]} more lines like {name}: {msg!r:.120} suppressed in {now - state[0]:.0f} s")
                state[0], state[1] = now, 0
        return out


RATE_LIMIT = RateLimitFilter()


def report_suppressed() -> None:
    """Log the counts of lines suppressed."""
    for line in RATE_LIMIT.summaries():
        logging.getLogger("microgrid.logs").info("%s", line)


async def report_suppressed_every(period_s: float = RATE_LIMIT.period_s) -> None:
    import asyncio

    while True:
        await asyncio.sleep(period_s)
        report_suppressed()


class LogBuffer(logging.Handler):
    """The last lines logged, for the console's `log` command."""

    def __init__(self, capacity: int = 500) -> None:
        super().__init__()
        from collections import deque

        self.records: deque[str] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def lines(self, n: int) -> list[str]:
        return list(self.records)[-n:]


LOG_BUFFER = LogBuffer()


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Bad input from the network must not fill the disk: one line per kind
    # per period on both the journal and the console's buffer.
    for h in (handler, LOG_BUFFER):
        if RATE_LIMIT not in h.filters:
            h.addFilter(RATE_LIMIT)
    root = logging.getLogger()
    root.handlers[:] = [handler, LOG_BUFFER]
    root.setLevel(getattr(logging, level.upper()))
    # aiocoap logs every duplicate and retransmission at INFO: too chatty
    # for a journal that must last on an SD card.
    logging.getLogger("coap").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("coap-server").setLevel(max(logging.WARNING, root.level))
