"""Fixtures used across the suite: the MicroPython executable, free
loopback ports, and a coordinator process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from microgrid.flash.unix_port import RUNTIME_ENV, RUNTIMES, MicroPythonNotFound, find_esp32like, find_micropython
from microgrid.processes import CoordinatorProcess, free_udp_port  # noqa: F401 - imported by tests from here

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=RUNTIMES)
def mp_runtime(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test once per MicroPython runtime: pip's unix port and the
    esp32-like build (32-bit, float32, 30-bit ticks). Every MicroPython
    process the test starts (run_micropython, flash.unix_port.boot, the
    flash tool) uses it. Without ../shared the esp32-like run is skipped
    with the reason, except in CI, where it must run."""
    name: str = request.param
    if name == "esp32like":
        try:
            find_esp32like()
        except MicroPythonNotFound as e:
            if os.environ.get("CI"):
                pytest.fail(f"CI must run the firmware in the esp32-like runtime: {e}")
            pytest.skip(str(e))
    monkeypatch.setenv(RUNTIME_ENV, name)
    return name


@pytest.fixture
def micropython(mp_runtime: str) -> str:
    return find_micropython()


def run_micropython(script: str, stdin: str = "", timeout: float = 120, cwd: Path | None = None,
                    heap: str | None = None) -> str:
    """Run `script` under the MicroPython unix port with the repository's
    edge/ and shared/ importable; return stdout, failing on a non-zero exit.
    The runtime is the test's `mp_runtime` (the unix port without one).
    `heap` ("512K") sets the heap size, as a board's RAM would."""
    env = dict(os.environ, MICROPYPATH=f".frozen:{REPO}")
    heap_args = ["-X", f"heapsize={heap}"] if heap else []
    proc = subprocess.run(
        [find_micropython(), *heap_args, "-c", script],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(cwd or REPO),
    )
    if proc.returncode != 0:
        raise AssertionError(f"micropython exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture
def coordinator_factory(tmp_path: Path) -> Iterator:
    started: list[CoordinatorProcess] = []

    def make(db: Path | None = None, port: int | None = None, config: Path | None = None) -> CoordinatorProcess:
        c = CoordinatorProcess(db or tmp_path / "coordinator.db", port or free_udp_port(), config)
        started.append(c)
        return c.start()

    yield make
    for c in started:
        c.stop()


def meter_summary(output: str) -> dict:
    for line in output.splitlines():
        if line.startswith("SUMMARY "):
            return json.loads(line[len("SUMMARY "):])
    raise AssertionError(f"firmware printed no SUMMARY line:\n{output[-3000:]}")
