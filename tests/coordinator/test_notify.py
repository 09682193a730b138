"""sd_notify over a real AF_UNIX datagram socket (service/notify.py): the
coordinator says READY=1 once it serves, feeds WATCHDOG=1 from its event
loop (a blocked loop feeds nothing) and STOPPING=1 at the end; without
$NOTIFY_SOCKET nothing is sent."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest

from microgrid.coordinator.app import Coordinator
from microgrid.coordinator.config import Config
from microgrid.coordinator.service.notify import Notifier

from ..conftest import free_udp_port


def listener(path: Path | str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.setblocking(False)
    return s


def drain(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except BlockingIOError:
            return out


async def until(s: socket.socket, want: str, timeout_s: float = 10.0) -> list[str]:
    """Everything received until a datagram equal to `want` (generous bound)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got += drain(s)
        if want in got:
            return got
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {want!r} within {timeout_s} s; got {got}")


def test_ready_then_watchdog_from_the_loop_then_stopping(tmp_path: Path) -> None:
    sock = listener(tmp_path / "notify")
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_s == pytest.approx(0.1)

    async def go() -> None:
        notifier.start()
        got = await until(sock, "WATCHDOG=1")
        assert got[0] == "READY=1\nSTATUS=serving"
        await until(sock, "WATCHDOG=1")  # and again: it keeps feeding
        # A blocked event loop feeds nothing: systemd would restart it.
        drain(sock)
        time.sleep(0.5)  # blocks the loop on purpose: five watchdog periods
        assert drain(sock) == []
        await until(sock, "WATCHDOG=1")  # the loop runs again, the feed resumes
        await notifier.stop()
        assert drain(sock)[-1] == "STOPPING=1"

    asyncio.run(go())
    sock.close()


def test_abstract_socket_and_the_watchdog_meant_for_another_process() -> None:
    name = f"microgrid-test-{os.getpid()}"
    sock = listener("\0" + name)
    n = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    assert n.watchdog_s is None  # the watchdog is for PID 1, not us
    assert n.notify("READY=1") and sock.recv(100) == b"READY=1"
    sock.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    n = Notifier.from_environment({})
    assert n.address is None and not n.notify("READY=1")
    gone = Notifier(str(tmp_path / "nobody-listens"))
    assert not gone.notify("READY=1")  # logged, not raised


def test_the_coordinator_notifies_ready_once_it_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = listener(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    config = Config()
    config.coap.port = free_udp_port()
    config.store.path = str(tmp_path / "c.db")

    async def go() -> None:
        c = Coordinator(config)
        assert drain(sock) == []
        await c.start()
        got = await until(sock, "WATCHDOG=1")
        assert got[0].startswith("READY=1")
        await c.stop()
        assert "STOPPING=1" in drain(sock)

    asyncio.run(go())
    sock.close()
