"""A board that cannot brick itself: whatever stops the start-up (a broken
config.json, a value no driver accepts, a missing key) puts the firmware in
safe mode, with the watchdog armed and fed and the console open to repair
it, never out of the program; a coordinator name that does not resolve is
a network error the running meter retries, not a reason to stop; a wrong
value is refused by `config set` before it is saved; Ctrl-C saves the
state and a restarted meter reuses no sequence number."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from microgrid.flash.image import write_image
from microgrid.flash.unix_port import boot

from ..conftest import free_udp_port, meter_summary
from ..e2e.test_meter_to_coordinator import assert_all_verify, provision, stored_rows
from .live import Live
from .mp import fixture, mp_json
from .test_console import run_piped

PZEM_VALID = fixture("pzem004t.json")["cases"][0]["replies"][0]


def wait_rows(db: Path, pub: bytes, n: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = stored_rows(db, pub)
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"{len(rows)} rows stored, expected {n}")


def test_safe_mode_keeps_the_watchdog_fed_and_the_console_open_and_repairs_one_key_at_a_time(tmp_path: Path) -> None:
    # In one process: main() with a broken config.json, no key file, and the
    # technician's commands waiting on stdin.
    (tmp_path / "config.json").write_text('{"coordinator_port": 5683,')
    commands = "\n".join([
        "status", "reading", "config set interval_s 1", "config clear", "status",
        "config set watchdog_s 5", "config set meter.type pzem004t",
        "config set meter.address 300", "config get watchdog_s", "reboot", "",
    ])
    got = mp_json(f"""
import json, os
os.chdir({str(tmp_path)!r})
from edge import hal, log
from edge.firmware import Firmware
from edge import safemode
code = safemode.main("config.json", Firmware)
w = hal.watchdogs
print(json.dumps({{"code": code, "watchdogs": [x.timeout_ms for x in w], "feeds": w[0].feeds if w else 0,
                  "config": open("config.json").read(), "bad": open("config.json.bad").read(),
                  "errors": [l for l in log.recent() if l.startswith("ERROR")]}}))
""", stdin=commands)
    assert isinstance(got, dict)
    out = got
    assert out["code"] == 3
    # Armed once, with the default when the config could not be read, and fed.
    assert out["watchdogs"] == [300000] and out["feeds"] >= 3, out
    # Each reason logged once, though start-up was tried again and again.
    assert [e.split(": ", 2)[2].split(" (console")[0] for e in out["errors"]] == [
        "config file config.json is not valid JSON",
        "key file device.key not found: provision the board with `microgrid flash`",
    ], out
    assert out["bad"] == '{"coordinator_port": 5683,'
    # A new meter type keeps only the settings it also takes.
    assert json.loads(out["config"]) == {"meter": {"type": "pzem004t"}}


def test_broken_config_at_boot_is_safe_mode_not_an_exit_and_heals_once_the_file_is_fixed(
        tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, console=True, interval_s=0.05)
    good = json.loads((image / "config.json").read_text())
    (image / "config.json").write_text('{"device_name": "meter-under-test", "console": tru')
    coordinator_factory(db=db, port=port)
    live = Live(image)
    try:
        live.expect("ERROR boot: safe mode: config file config.json is not valid JSON")
        live.command("status", "safe mode: config file config.json is not valid JSON")
        live.expect("free memory")
        live.command("reading", "error: reading is not available in safe mode (config file config.json is not valid JSON)")
        live.command("config set interval_s 1", "error: config set: config file config.json is not valid JSON; "
                                                "`config clear` starts again from the defaults")
        # The installer writes a good config: the next attempt starts the meter.
        write_image(image, good)
        live.expect("INFO boot: started after", timeout=30)
        wait_rows(db, pub, 3)
        live.command("status", "link up")
        live.command("reboot", "SUMMARY")
        assert live.finish() == 3
    finally:
        live.kill()
    assert live.text.count("safe mode: config file") == 2, live.text  # logged once, then the status line
    assert "Traceback" not in live.text and "cannot start" not in live.text
    assert_all_verify(stored_rows(db, pub), pub)


def test_a_meter_address_no_driver_accepts_is_refused_and_nothing_is_saved(tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, _ = provision(tmp_path, db, port, console=True, interval_s=0.05,
                         meter={"type": "pzem004t", "uart": {"id": 2}, "address": 1})
    (image / "hal_script.json").write_text(json.dumps({"uart": {"2": {"replies": [PZEM_VALID], "repeat": True}}}))
    coordinator_factory(db=db, port=port)
    before = (image / "config.json").read_text()
    out, code = run_piped(image, ["config set meter.address 300", "config set meter.address 0",
                                  "config set meter.uart {\"id\": 2, \"tx\": \"17\"}", "config set watchdog_s 5",
                                  "config set wifi {\"ssid\": \"x\", \"password\": 7}", "reboot"], pause=0.1)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: config meter.address=300: expected an integer in 1..248",
        "error: config meter.address=0: expected an integer in 1..248",
        "error: config meter.uart.tx='17': expected a GPIO number in 0..48 or null",
        "error: config watchdog_s=5: expected 0 (off) or a number of seconds in 30..3600",
        'error: config wifi: expected null or an object with a non-empty "ssid" and a "password" string',
    ], out
    assert (image / "config.json").read_text() == before and code == 3
    # A good value is saved; for an SDM (which keeps the UART and the
    # address) the top address is 247.
    out, _ = run_piped(image, ["config set meter.address 2", "config set meter.type sdm120",
                               "config set meter.address 248", "reboot"], pause=0.1)
    assert "meter.address = 2 (saved; applies after reboot)" in out, out
    assert "error: config meter.address=248: expected an integer in 1..247" in out, out
    assert json.loads((image / "config.json").read_text())["meter"]["address"] == 2


def test_a_bad_value_saved_earlier_boots_into_safe_mode_and_config_set_repairs_it(tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    port = free_udp_port()
    # An older firmware saved an address no Modbus device can have.
    image, pub = provision(tmp_path, db, port, console=True, interval_s=0.05,
                           meter={"type": "pzem004t", "uart": {"id": 2}, "address": 300})
    (image / "hal_script.json").write_text(json.dumps({"uart": {"2": {"replies": [PZEM_VALID], "repeat": True}}}))
    coordinator_factory(db=db, port=port)
    live = Live(image)
    try:
        reason = "config meter.address=300: expected an integer in 1..248"
        live.command("status", "safe mode: " + reason)
        live.command("config set meter.address 301", "error: " + reason.replace("300", "301"))
        live.command("config get meter.address", "meter.address = 300")
        live.command("config set meter.address 1", "meter.address = 1 (saved; starting again)")
        live.expect("INFO boot: started after")
        rows = wait_rows(db, pub, 2)
        assert rows[0]["import_wh"] == 123456
        live.command("reboot", "SUMMARY")
        assert live.finish() == 3
    finally:
        live.kill()
    assert "Traceback" not in live.text


def test_a_coordinator_name_that_does_not_resolve_is_retried_while_the_meter_keeps_metering(
        tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    port = free_udp_port()
    # .invalid never resolves (RFC 6761): a board whose Wi-Fi is not up yet.
    image, pub = provision(tmp_path, db, port, console=True, interval_s=0.05, coordinator_host="coordinator.invalid")
    coordinator_factory(db=db, port=port)
    live = Live(image)
    try:
        live.expect("console ready")
        live.expect("cannot resolve coordinator host 'coordinator.invalid'")
        live.command("status", "link down")
        live.expect("last network: cannot resolve coordinator host 'coordinator.invalid'")
        assert "safe mode" not in live.text
        # The name resolves again (here: the technician points it elsewhere).
        live.command("config set coordinator_host 127.0.0.1", 'coordinator_host = "127.0.0.1" (saved, applied)')
        wait_rows(db, pub, 20)
        live.command("reboot", "SUMMARY")
        assert live.finish() == 3
    finally:
        live.kill()
    summary = meter_summary(live.text)
    rows = stored_rows(db, pub)
    # Every reading made while the name did not resolve was delivered.
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    # (The reboot may cut the last exchange after the coordinator stored it:
    # that reading is still pending and goes out again as a duplicate.)
    assert summary["delivered"] <= len(rows) <= summary["delivered"] + summary["pending"], summary
    assert summary["rejected"] == 0 and summary["pending"] <= 3, summary
    assert "Traceback" not in live.text
    assert json.loads((image / "config.json").read_text())["coordinator_host"] == "127.0.0.1"


def test_ctrl_c_saves_the_state_and_the_restarted_meter_reuses_no_sequence_number(tmp_path: Path, coordinator_factory) -> None:
    # Ctrl-C typed at four points of the running loop: the scripted
    # watchdog's Nth feed (edge/hal/scripted.py), at the top of the loop or
    # in an idle slice, between readings or while an exchange waits for the
    # coordinator. Not a SIGINT: the unix port delivers that at once, even
    # in the middle of a garbage collection (a board raises it between two
    # bytecodes), and the interpreter crashed with SIGSEGV now and then.
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, interval_s=0.01)
    coordinator_factory(db=db, port=port)
    outputs = []
    config = json.loads((image / "config.json").read_text())
    dead = free_udp_port()  # nothing answers there
    for run, at in enumerate(FEEDS_BEFORE_CTRL_C):
        # The second run cannot reach the coordinator: its Ctrl-C lands while
        # an exchange waits, with every reading it made still queued.
        write_image(image, dict(config, coordinator_port=dead if run == 1 else port))
        (image / "hal_script.json").write_text(json.dumps({"ctrl_c_at_feed": at}))
        meter = boot(image)
        out, _ = meter.communicate(timeout=60)
        outputs.append(out)
        assert meter.returncode == 130, out
        assert "WARN boot: interrupted (Ctrl-C): outbox and journal saved" in out and "Traceback" not in out, out
        summary = meter_summary(out)
        assert summary["produced"] >= 1, out
        if run == 1:
            assert summary["delivered"] == 0 and summary["pending"] >= summary["produced"], out
        assert any(os.path.getsize(p) > 0 for p in image.glob("state.*"))
    (image / "hal_script.json").unlink()
    write_image(image, dict(config, max_readings=5))
    out, _ = boot(image).communicate(timeout=60)
    summary = meter_summary(out)
    assert summary["pending"] == 0 and summary["rejected"] == 0, out
    rows = stored_rows(db, pub)
    # Every number once, none reused with other content (that would be
    # rejected), counters never backwards, every signature valid.
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1)), outputs
    assert summary["last_seq"] == rows[-1]["seq"]
    assert len(rows) >= len(FEEDS_BEFORE_CTRL_C) + 5
    imports = [r["import_wh"] for r in rows]
    assert imports == sorted(imports)
    assert_all_verify(rows, pub)


# Watchdog feeds before the Ctrl-C of each run (see the test above).
FEEDS_BEFORE_CTRL_C = (9, 24, 41, 66)


def test_ctrl_c_leaves_the_watchdog_fed_from_a_timer_and_the_journal_saved(tmp_path: Path) -> None:
    # In one process: Ctrl-C lands in the loop after two readings.
    (tmp_path / "config.json").write_text(json.dumps({"watchdog_s": 60, "coordinator_port": 9, "max_readings": 0}))
    (tmp_path / "device.key").write_text("11" * 32)
    got = mp_json(f"""
import json, os
os.chdir({str(tmp_path)!r})
from edge import hal, safemode
from edge.firmware import Firmware
from edge.journal import Journal

class CtrlC(Firmware):
    def run(self):
        self.measure()
        self.measure()
        raise KeyboardInterrupt

code = safemode.main("config.json", CtrlC)
ka = [(k[0] is hal.watchdogs[0], k[1], k[2]) for k in hal.keepalives]
print(json.dumps({{"code": code, "keepalives": ka, "watchdog": hal.watchdogs[0].timeout_ms,
                  "journal": Journal("state").load()}}))
""")
    assert isinstance(got, dict)
    assert got["code"] == 130
    # A quarter of the 60 s timeout, for 30 minutes; then the watchdog restarts the board.
    assert got["keepalives"] == [[True, 15000, 1800000]] and got["watchdog"] == 60000
    assert got["journal"]["seq"] == 2


def test_the_watchdog_is_fed_while_an_exchange_waits_for_a_coordinator_that_never_answers(tmp_path: Path) -> None:
    # Nothing listens on the port: one reading, retransmitted for 0.3+0.6+1.2 s
    # (up to 1.5 times that), then the drain gives up.
    port = free_udp_port()
    (tmp_path / "config.json").write_text(json.dumps({
        "coordinator_port": port, "max_readings": 1, "ack_timeout_s": 0.3, "max_retransmit": 2,
        "drain_timeout_s": 1.0, "retry_after_s": 5.0}))
    (tmp_path / "device.key").write_text("22" * 32)
    got = mp_json(f"""
import json, os, time
os.chdir({str(tmp_path)!r})
from edge import hal, safemode
from edge.firmware import Firmware

fed = []
class Fed(hal.Watchdog):
    def feed(self):
        fed.append(time.ticks_ms())
hal.watchdog = lambda ms: Fed(ms)
code = safemode.main("config.json", Firmware)
gaps = [time.ticks_diff(b, a) for a, b in zip(fed, fed[1:])]
print(json.dumps({{"code": code, "span": time.ticks_diff(fed[-1], fed[0]), "max_gap": max(gaps)}}))
""")
    assert isinstance(got, dict)
    assert got["code"] == 0
    # Blocking in recv, the loop would not feed it for the whole exchange.
    assert got["span"] >= 2000 and got["max_gap"] < 1000, got


def test_a_name_that_starts_resolving_later_heals_by_itself(tmp_path: Path, coordinator_factory) -> None:
    # Wi-Fi comes up after the boot: the first lookups fail, then the name
    # resolves; nobody touches the meter.
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, coordinator_host="coordinator.lan", max_readings=5, interval_s=0.05,
                           retry_after_s=0.05)
    coordinator_factory(db=db, port=port)
    got = mp_json(f"""
import json, os, socket
os.chdir({str(image)!r})
from edge import coap, log, safemode
from edge.firmware import Firmware

class NotYet:
    # The socket module as coap.py sees it, with a resolver that is not up yet.
    AF_INET = socket.AF_INET
    SOCK_DGRAM = socket.SOCK_DGRAM
    socket = socket.socket
    calls = 0

    def getaddrinfo(self, host, port):
        NotYet.calls += 1
        if host == "coordinator.lan" and NotYet.calls <= 3:
            raise OSError("[addrinfo error -3]")
        return socket.getaddrinfo("127.0.0.1" if host == "coordinator.lan" else host, port)

coap.socket = NotYet()
code = safemode.main("config.json", Firmware)
print(json.dumps({{"code": code, "lookups": NotYet.calls,
                  "warned": [l for l in log.recent() if "cannot resolve" in l]}}))
""")
    assert isinstance(got, dict)
    assert got["code"] == 0 and got["lookups"] == 4, got
    assert len(got["warned"]) == 3 and "cannot resolve coordinator host 'coordinator.lan'" in got["warned"][0], got
    rows = stored_rows(db, pub)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert_all_verify(rows, pub)
