"""Local processes for tests, benchmarks and the demo: a free UDP port on
127.0.0.1, and `microgrid coordinator run` as a child process.

One copy, in the installed package, because benchmarks run outside pytest
and cannot import tests/."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


# Ports below Linux's ephemeral range (32768-60999): no socket bound to port
# 0 anywhere on the machine is ever given one of them.
_LOW, _HIGH = 20000, 32768
_cursor: list[int] = []


def _worker_ports() -> tuple[int, int] | None:
    """Under pytest-xdist, this worker's own slice of [_LOW, _HIGH)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not worker.startswith("gw") or not worker[2:].isdigit() or not count.isdigit() or int(count) < 1:
        return None
    size = (_HIGH - _LOW) // int(count)
    lo = _LOW + int(worker[2:]) * size
    return lo, lo + size


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port on 127.0.0.1 that was free a moment ago (UDP, or TCP with
    socket.SOCK_STREAM). One process alone takes it from the kernel's
    ephemeral range. Tests in parallel workers each take theirs from a
    slice of their own below that range: a port chosen, closed and bound
    again later cannot then be taken meanwhile by another worker's test or
    by any socket bound to port 0."""
    ports = _worker_ports()
    if ports is None:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    lo, hi = ports
    if not _cursor:
        _cursor.append(os.getpid() * 7919)  # a child process starts elsewhere in the slice
    for _ in range(hi - lo):
        port = lo + _cursor[0] % (hi - lo)
        _cursor[0] += 1
        try:
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no free port on 127.0.0.1 in {lo}..{hi - 1}")


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago (free_port)."""
    return free_port(socket.SOCK_DGRAM)


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (free_port)."""
    return free_port(socket.SOCK_STREAM)


class CoordinatorProcess:
    """`microgrid coordinator run` on 127.0.0.1 as a child process. Its
    output goes to a log file (`<db>.log` unless given), so it can never
    block on a full pipe; `start` returns once it has printed READY."""

    def __init__(self, db: Path, port: int, config: Path | None = None, log: Path | None = None) -> None:
        self.db = db
        self.port = port
        self.config = config
        self.log_path = log or db.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "CoordinatorProcess":
        cmd = [sys.executable, "-m", "microgrid.cli", "coordinator", "run", "--db", str(self.db),
               "--host", "127.0.0.1", "--port", str(self.port)]
        if self.config:
            cmd += ["--config", str(self.config)]
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(line.startswith("READY") for line in self._log_since(start).splitlines()):
                return self
            time.sleep(0.05)
        self.stop()
        tail = "\n".join(self._log_since(start).splitlines()[-20:])
        raise RuntimeError(f"the coordinator did not answer READY within {timeout:g} s; its log:\n{tail}")

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
