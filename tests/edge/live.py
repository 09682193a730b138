"""A running firmware process driven line by line: what a technician at
the console sees, read as it comes (from a pipe or a pseudo-terminal)."""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

from microgrid.flash.unix_port import boot


class Live:
    """The firmware in `image`, its console on a pipe (tty=False) or on a
    pseudo-terminal (tty=True; the terminal left as the firmware sets it)."""

    def __init__(self, image: Path, tty: bool = False, raw: bool = False) -> None:
        self.got = b""
        self.seen = 0  # expect() searches from here on
        if tty:
            import pty
            import tty as tty_mod

            master, slave = pty.openpty()
            if raw:
                # As a board's UART: no line discipline, no kernel echo.
                tty_mod.setraw(slave)
            self.proc = boot(image, stdin=slave, stdout=slave, stderr=slave)
            os.close(slave)
            self.rfd = self.wfd = master
        else:
            # Read and written through the file descriptors, unbuffered.
            self.proc = boot(image, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.rfd = self.proc.stdout.fileno()
            self.wfd = self.proc.stdin.fileno()

    def _pump(self, timeout: float) -> bool:
        if not select.select([self.rfd], [], [], timeout)[0]:
            return False
        try:
            chunk = os.read(self.rfd, 65536)
        except OSError:
            chunk = b""
        self.got += chunk
        return bool(chunk)

    def expect(self, marker: str | bytes, timeout: float = 20) -> float:
        """Wait for `marker` after what was already matched; the seconds it took."""
        m = marker.encode() if isinstance(marker, str) else marker
        start = time.monotonic()
        deadline = start + timeout
        while self.got.find(m, self.seen) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or (not self._pump(min(left, 0.1)) and self.proc.poll() is not None and not self._pump(0)):
                raise AssertionError(f"{marker!r} not seen within {timeout} s:\n{self.text[-3000:]}")
        self.seen = self.got.find(m, self.seen) + len(m)
        return time.monotonic() - start

    def send(self, data: str | bytes) -> None:
        os.write(self.wfd, data.encode() if isinstance(data, str) else data)

    def command(self, line: str, marker: str, timeout: float = 20) -> float:
        """Type a command line; the seconds until `marker` answered it."""
        self.send(line + "\n")
        return self.expect(marker, timeout)

    def finish(self, timeout: float = 30) -> int:
        """Wait for the exit (draining output); the exit status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._pump(0.1)
        if self.proc.poll() is None:
            self.kill()
            raise AssertionError(f"the firmware did not exit within {timeout} s:\n{self.text[-3000:]}")
        while self._pump(0):
            pass
        self.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.close()

    def close(self) -> None:
        if self.rfd < 0:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        else:
            os.close(self.rfd)
        self.rfd = self.wfd = -1

    def close_input(self) -> None:
        """End of input (a pipe's writer closed): the console closes."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    @property
    def text(self) -> str:
        return self.got.decode(errors="replace")
