"""Every firmware test runs in both MicroPython runtimes (see mp_runtime)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _each_runtime(mp_runtime: str) -> str:
    return mp_runtime
