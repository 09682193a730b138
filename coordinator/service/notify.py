"""systemd's notify protocol (sd_notify(3)), for `Type=notify` and
`WatchdogSec=`.

systemd passes the path of a datagram socket in $NOTIFY_SOCKET (a leading
"@" means Linux's abstract namespace) and, with a watchdog, the interval in
$WATCHDOG_USEC (and $WATCHDOG_PID, the process meant). We send

- `READY=1` once the coordinator serves (systemd then counts it started;
  units ordered after it wait for that),
- `WATCHDOG=1` every half interval from a task on the event loop: a loop
  that hangs stops feeding, and systemd kills and restarts the service,
- `STOPPING=1` when it shuts down.

The protocol is one line of text per datagram, so it is written here in a
few lines rather than taken from a library (python-systemd needs
libsystemd headers to build; `sdnotify` is unmaintained). Without
$NOTIFY_SOCKET (a terminal, the tests, the demo) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Mapping

log = logging.getLogger("microgrid.service.notify")


class Notifier:
    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> "Notifier":
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or None
        watchdog_s = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(address, watchdog_s)

    def notify(self, text: str) -> bool:
        """Send one notification; False (logged) if it could not be sent."""
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(text.encode(), target)
        except OSError as e:
            log.warning("sd_notify %s to %s failed: %s", text.split("\n")[0], self.address, e.strerror)
            return False
        self.sent += 1
        return True

    def start(self) -> None:
        """READY=1 now; WATCHDOG=1 from the running loop if systemd asked."""
        self.notify("READY=1\nSTATUS=serving")
        if self.watchdog_s and self._task is None:
            self._task = asyncio.ensure_future(self._feed(self.watchdog_s / 2))

    async def _feed(self, every_s: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(every_s)

    async def stop(self) -> None:
        self.notify("STOPPING=1")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
