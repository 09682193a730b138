"""Local processes for tests, benchmarks and the demo: a free UDP port on
127.0.0.1, and `microgrid coordinator run` as a child process.

One copy, in the installed package, because benchmarks run outside pytest
and cannot import tests/."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
