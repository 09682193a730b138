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

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = f"<{prio}>{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info).replace("\n", f"\n<{prio}>")
        return text


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
    root = logging.getLogger()
    root.handlers[:] = [handler, LOG_BUFFER]
    root.setLevel(getattr(logging, level.upper()))
    # aiocoap logs every duplicate and retransmission at INFO: too chatty
    # for a journal that must last on an SD card.
    logging.getLogger("coap").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("coap-server").setLevel(max(logging.WARNING, root.level))
