"""The esp32-like MicroPython with the firmware frozen in, for the tests
that flash a frozen image: built once per firmware source (about a minute,
counted once in the suite) and then taken from the cache
(~/.cache/microgrid, or $MICROGRID_CACHE)."""

from __future__ import annotations

import os

import pytest

from microgrid.flash import frozen
from microgrid.flash.errors import FlashError
from microgrid.flash.unix_port import MicroPythonNotFound, find_esp32like


@pytest.fixture(scope="session")
def frozen_micropython() -> str:
    """Skipped with the reason where ../shared is absent, except in CI,
    where the frozen firmware must be tested."""
    try:
        find_esp32like()
        frozen.build_script()
    except (MicroPythonNotFound, FlashError) as e:
        reason = str(e) if isinstance(e, MicroPythonNotFound) else e.cause
        if os.environ.get("CI"):
            pytest.fail(f"CI must test the frozen firmware image: {reason}")
        pytest.skip(reason)
    return str(frozen.esp32like_binary(log=False))
