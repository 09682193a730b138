"""The technician console: commands answer in lines, errors are one line,
and `microgrid console` reaches a running coordinator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from microgrid.coordinator.config import Config
from microgrid.coordinator.console import Console
from microgrid.coordinator.logs import LogBuffer
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.shared import reading, secp256k1

SECRET = bytes(range(1, 33))
PUB = secp256k1.public_key(SECRET)


class RecordingRelay:
    def __init__(self) -> None:
        self.state = "disconnected"

    def connect(self) -> None:
        self.state = "connected"

    def disconnect(self) -> None:
        self.state = "disconnected"


class Target:
    def __init__(self, tmp_path: Path) -> None:
        self.config = Config()
        self.config.ingest.installer_token = "s3cret"
        self.store = ReadingStore(open_database(tmp_path / "c.db"))
        self.store.register_device(PUB, "kitchen")
        for seq in (1, 2, 3):
            m = reading.build(SECRET, PUB, seq, 1_700_000_000 + seq, 10 * seq, 0, 400, 231.0)
            self.store.insert(reading.parse(m), m)
        self.relays: dict[str, Any] = {"export": RecordingRelay()}
        self.log_buffer = LogBuffer()
        self.console_peers = None

    def status(self) -> dict[str, Any]:
        return {"status": "ok", "readings": self.store.count()}


@pytest.fixture
def console(tmp_path: Path) -> Console:
    return Console(Target(tmp_path))


def test_help_lists_every_command(console: Console) -> None:
    out = console.handle("help")
    for name in ("status", "meters", "readings", "peers", "orders", "market", "channels", "relay", "log", "config"):
        assert f"  {name}" in out
    assert console.handle("help readings").startswith("readings METER")


@pytest.mark.parametrize(
    "line, error",
    [
        ("frobnicate", "error: unknown command 'frobnicate'; type 'help' for the list"),
        ("readings", "error: usage: readings METER [N]"),
        ("readings nosuch", "error: no meter 'nosuch'; 'meters' lists them"),
        ("readings kitchen many", "error: readings: N must be a whole number, got 'many'"),
        ("readings kitchen 0", "error: readings: N must be between 1 and 1000, got 0"),
        ("status now", "error: status takes no arguments; usage: status"),
        ("relay export maybe", "error: usage: relay NAME on|off"),
        ("relay pump on", "error: no relay 'pump'; configured: export"),
        ("peers", "error: the overlay is not configured on this coordinator"),
        ('readings "unclosed', "error: cannot parse the line: No closing quotation"),
    ],
)
def test_bad_commands_get_one_line_errors(console: Console, line: str, error: str) -> None:
    out = console.handle(line)
    assert out == error and "\n" not in out


def test_meters_and_readings_show_stored_values(console: Console) -> None:
    meters = console.handle("meters")
    assert "kitchen" in meters and reading.device_id(PUB) in meters and "30" in meters
    rows = console.handle("readings kitchen 2").splitlines()
    assert rows[0].split()[0] == "seq" and [r.split()[0] for r in rows[1:]] == ["3", "2"]


def test_relay_switches_and_config_hides_secrets(console: Console) -> None:
    assert console.handle("relay export on") == "relay export: connected"
    assert "connected" in console.handle("relay")
    cfg = console.handle("config")
    assert "s3cret" not in cfg and 'installer_token = "(set)"' in cfg


def test_console_command_talks_to_a_running_coordinator(tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    store = ReadingStore(open_database(db))
    store.register_device(PUB, "garage")
    store.db.close()
    coordinator_factory(db=db)
    proc = subprocess.run(
        [sys.executable, "-m", "microgrid.cli", "console", "--db", str(db)],
        input="status\nmeters\nbogus\nquit\n", capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "status: ok" in proc.stdout and "garage" in proc.stdout
    assert "error: unknown command 'bogus'" in proc.stdout


def test_console_without_a_coordinator_says_what_to_check(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "microgrid.cli", "console", "--db", str(tmp_path / "none.db")],
        input="status\n", capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 1 and "no coordinator console at" in proc.stderr


def test_console_through_a_pseudo_terminal(tmp_path: Path, coordinator_factory) -> None:
    """A technician's terminal: the console runs on a pty, answers each
    command after its prompt, and leaves on 'quit'."""
    import os
    import pty
    import select
    import time

    db = tmp_path / "c.db"
    store = ReadingStore(open_database(db))
    store.register_device(PUB, "porch")
    store.db.close()
    coordinator_factory(db=db)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the console on the pty's slave side
        os.execv(sys.executable, [sys.executable, "-m", "microgrid.cli", "console", "--db", str(db)])

    def read_until(marker: str, timeout: float = 15) -> str:
        buf = ""
        deadline = time.monotonic() + timeout
        while marker not in buf and time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    buf += os.read(fd, 4096).decode(errors="replace")
                except OSError:
                    break
        assert marker in buf, f"no {marker!r} in {buf!r}"
        return buf

    try:
        read_until("microgrid> ")
        os.write(fd, b"meters\n")
        assert "porch" in read_until("microgrid> ")
        os.write(fd, b"readings nowhere\n")
        assert "error: no meter 'nowhere'" in read_until("microgrid> ")
        os.write(fd, b"quit\n")
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    finally:
        os.close(fd)


def test_readings_show_resets_and_flags_to_the_technician(tmp_path: Path) -> None:
    target = Target(tmp_path)
    m = reading.build(SECRET, PUB, 9, 1_700_000_100, 2, 0, 1, 230.0,
                      [("flags", None, 1), ("reset", None, "energy_reset"), ("reset_import_wh", "Wh", 30)])
    target.store.insert(reading.parse(m), m)
    out = Console(target).handle("readings kitchen 1")
    assert "RESET energy_reset (before: import 30 Wh" in out and "below accuracy floor" in out


def test_market_shows_each_settled_interval(tmp_path: Path) -> None:
    target = Target(tmp_path)
    console = Console(target)
    assert console.handle("market") == "error: the market is not configured on this coordinator"
    target.console_market = lambda n: [f"zone @{i}: price 120 sat/kWh" for i in range(n)]  # type: ignore[attr-defined]
    assert console.handle("market 2").splitlines() == ["zone @0: price 120 sat/kWh", "zone @1: price 120 sat/kWh"]
    assert console.handle("market x") == "error: market: N must be a whole number, got 'x'"


def test_prices_are_shown_and_set_from_the_console(tmp_path: Path) -> None:
    target = Target(tmp_path)
    console = Console(target)
    assert console.handle("prices") == "error: the market is not configured on this coordinator"
    target.config.market.enabled = True
    target.config.market.zone = "elm"
    target.config.market.prices = {"sell": 80, "buy": 150}
    assert console.handle("prices").splitlines() == ["sell = 80", "buy = 150"]
    assert console.handle("prices sell 95").startswith("sell price set to 95 sat/kWh")
    assert target.config.market.policy().sell.sat_per_kwh == 95
    assert console.handle("prices sell -3").startswith("error: prices:")
    assert console.handle("prices sell lots") == "error: prices: SAT_PER_KWH must be a whole number, got 'lots'"
    assert console.handle("prices hold 3") == "error: usage: prices sell|buy SAT_PER_KWH"
    assert target.config.market.prices["sell"] == 95  # refused values changed nothing
