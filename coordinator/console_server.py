"""Serving the technician console on a Unix socket inside the coordinator.

`microgrid console` connects here and relays lines from a terminal or a
serial port. The socket is created with mode 0600 (owner only): the
console can switch relays.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from .console import Console

log = logging.getLogger("microgrid.console")
PROMPT = "microgrid> "
BANNER = "microgrid coordinator console; type 'help' for commands, 'quit' to leave"


class ConsoleServer:
    def __init__(self, console: Console, path: str | Path) -> None:
        self.console = console
        self.path = Path(path)
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.unlink()  # left over from a killed process
        old = os.umask(0o077)
        try:
            self.server = await asyncio.start_unix_server(self._session, path=str(self.path))
        finally:
            os.umask(old)
        log.info("console on %s", self.path)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write((BANNER + "\n" + PROMPT).encode())
            await writer.drain()
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                line = raw.decode(errors="replace").strip()
                if line.lower() in ("quit", "exit"):
                    break
                out = self.console.handle(line)
                writer.write(((out + "\n") if out else "").encode() + PROMPT.encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
