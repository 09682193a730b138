"""What `microgrid flash` tells the installer: one line per step as it
runs, and for a failure the step, the cause and the fix.

Every failure is a `FlashError`; the CLI prints it and exits 1. Nothing
below the CLI prints a traceback for a condition an installer can meet
(a missing tool, a wrong port, a refused token).
"""

from __future__ import annotations

import sys
from typing import TextIO


class FlashError(Exception):
    """A step failed: `step` names it, `cause` says what was found (with
    the value), `fix` says what the installer does about it."""

    def __init__(self, step: str, cause: str, fix: str) -> None:
        super().__init__(f"{step}: {cause}")
        self.step = step
        self.cause = cause
        self.fix = fix

    def render(self) -> str:
        return f"error in step '{self.step}': {self.cause}\n  fix: {self.fix}"


class Progress:
    """Prints `[n/N] step ... detail` lines as the steps run."""

    def __init__(self, total: int, out: TextIO | None = None) -> None:
        self.total = total
        self.n = 0
        self.out = out or sys.stdout

    def step(self, name: str) -> str:
        self.n += 1
        print(f"[{self.n}/{self.total}] {name} ...", file=self.out, flush=True)
        return name

    def done(self, detail: str) -> None:
        print(f"      {detail}", file=self.out, flush=True)

    def warn(self, detail: str) -> None:
        print(f"      warning: {detail}", file=self.out, flush=True)
