"""A one-line progress bar for the terminal (a line per 10 % elsewhere)."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from typing import TextIO


class Progress:
    def __init__(self, total_s: float, start: float, stream: TextIO = sys.stderr, enabled: bool = True) -> None:
        self.total_s = total_s
        self.start = start
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self._last_decile = -1
        self._last_draw = 0.0

    def update(self, sim_now: float, counts: dict[str, int], force: bool = False) -> None:
        if not self.enabled:
            return
        frac = min(max((sim_now - self.start) / self.total_s, 0.0), 1.0)
        stamp = datetime.fromtimestamp(sim_now, timezone.utc).strftime("%Y-%m-%d %H:%M")
        tail = "  ".join(f"{k} {v}" for k, v in counts.items())
        if self.tty:
            if not force and time.monotonic() - self._last_draw < 0.2:
                return
            self._last_draw = time.monotonic()
            width = 30
            bar = "#" * int(frac * width) + "." * (width - int(frac * width))
            self.stream.write(f"\r[{bar}] {frac * 100:5.1f}%  sim {stamp}  {tail}\x1b[K")
            self.stream.flush()
        else:
            decile = int(frac * 10)
            if decile != self._last_decile or force:
                self._last_decile = decile
                self.stream.write(f"{frac * 100:5.1f}%  sim {stamp}  {tail}\n")
                self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
