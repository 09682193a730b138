"""Fixtures used across the suite: the MicroPython executable, free
loopback ports, and a coordinator process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def micropython() -> str:
    from microgrid.flash.unix_port import find_micropython

    return find_micropython()


def run_micropython(script: str, stdin: str = "", timeout: float = 120, cwd: Path | None = None) -> str:
    """Run `script` under the MicroPython unix port with the repository's
    edge/ and shared/ importable; return stdout, failing on a non-zero exit."""
    from microgrid.flash.unix_port import find_micropython

    env = dict(os.environ, MICROPYPATH=f".frozen:{REPO}")
    proc = subprocess.run(
        [find_micropython(), "-c", script],
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


class CoordinatorProcess:
    """`microgrid coordinator run` as a child process on 127.0.0.1."""

    def __init__(self, db: Path, port: int, config: Path | None = None, log: Path | None = None) -> None:
        self.db = db
        self.port = port
        self.config = config
        self.log_path = log or db.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> "CoordinatorProcess":
        cmd = [sys.executable, "-m", "microgrid.cli", "coordinator", "run", "--db", str(self.db),
               "--host", "127.0.0.1", "--port", str(self.port)]
        if self.config:
            cmd += ["--config", str(self.config)]
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True)
        deadline = time.time() + timeout
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY") or time.time() > deadline:
            self.stop()
            raise AssertionError(f"coordinator did not start: {line!r}; log:\n{self.log_path.read_text()}")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if hasattr(self, "_log"):
            self._log.close()


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
