"""The console behaves as a technician needs it to: it answers at once
while the coordinator does not (a CoAP exchange retrying for a minute runs
the console between its waits), a reboot typed then does not wait for the
exchange, typed characters are echoed on a terminal (not on a pipe), and
looking at the meter (`reading`, `selftest`) never swallows the reset
evidence the next signed reading must carry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microgrid.flash.image import write_image
from microgrid.flash.unix_port import boot

from ..conftest import free_udp_port, meter_summary
from ..e2e.test_meter_to_coordinator import assert_all_verify, provision, stored_rows
from .live import Live
from .mp import fixture
from .test_console import console_image, run_piped


def test_status_answers_within_a_second_while_the_coordinator_is_unreachable(tmp_path: Path) -> None:
    # Nothing listens on the port: each exchange retransmits for 2+4+8+16+32 s.
    image, _ = provision(tmp_path, tmp_path / "c.db", free_udp_port(), console=True, interval_s=0.05,
                         ack_timeout_s=2.0, max_retransmit=4)
    live = Live(image)
    try:
        live.expect("console ready")
        live.expect("next seq 1")
        answers = []
        for _ in range(3):
            answers.append(live.command("status", "free memory"))
        assert max(answers) < 1.0, (answers, live.text)
        status = live.text[live.text.rfind("uptime"):]
        # It answered in the middle of the first exchange, none finished yet.
        assert "delivered 0" in status and "network=0" in status, status
        # A reboot does not wait for the exchange either.
        took = live.command("reboot", "SUMMARY", timeout=10)
        assert took < 5, live.text
        assert live.finish() == 3
    finally:
        live.kill()
    summary = meter_summary(live.text)
    assert summary["delivered"] == 0 and summary["pending"] >= 1, summary
    assert "Traceback" not in live.text


def test_typed_characters_are_echoed_on_a_terminal_and_erased_by_backspace(tmp_path: Path, coordinator_factory) -> None:
    image, pub, _ = console_image(tmp_path, coordinator_factory)
    # The terminal in raw mode, as a board's UART: any echo is the console's.
    live = Live(image, tty=True, raw=True)
    try:
        live.expect("console ready")
        live.send("stat")
        live.expect("stat", timeout=10)  # before Enter
        live.send("x\x7f")
        live.expect("x\x08 \x08", timeout=10)
        live.send("us\r")
        live.expect("free memory")
        live.send("pubkey\r")
        live.expect("pubkey")
        live.expect(pub.hex())
        live.send("reboot\r")
        live.expect("SUMMARY")
        assert live.finish() == 3
    finally:
        live.kill()


def test_piped_input_is_not_echoed(tmp_path: Path, coordinator_factory) -> None:
    image, pub, _ = console_image(tmp_path, coordinator_factory)
    out, code = run_piped(image, ["pubkey", "config get interval_s", "reboot"])
    assert code == 3 and pub.hex() in out and "interval_s = 0.05" in out, out
    lines = out.splitlines()
    assert "pubkey" not in lines and "config get interval_s" not in lines and "reboot" not in lines, out


@pytest.mark.parametrize("command", ["reading", "selftest"])
def test_a_console_read_does_not_swallow_a_counter_drop(tmp_path: Path, coordinator_factory, command: str) -> None:
    case = next(c for c in fixture("pzem004t.json")["cases"] if c["name"] == "counter dropped (meter swapped)")
    valid, dropped = case["replies"]
    db = tmp_path / "c.db"
    port = free_udp_port()
    image, pub = provision(tmp_path, db, port, console=True, max_readings=3, interval_s=0.05,
                           meter={"type": "pzem004t", "uart": {"id": 2}})
    # The first signed reading sees 123456 Wh; then the meter is swapped
    # (3 Wh) and every later read sees the new counters.
    (image / "hal_script.json").write_text(json.dumps({"uart": {"2": {"replies": [valid] + [dropped] * 20}}}))
    coordinator_factory(db=db, port=port)
    # The command waits in the pipe: the console takes it right after the
    # first reading, so the console's read is the first to see the drop.
    out, code = run_piped(image, [command], pause=0)
    assert code == 0, out
    if command == "reading":
        assert "import 3 Wh" in out, out
    else:
        assert "PASS meter: 3 Wh" in out, out
    assert meter_summary(out)["delivered"] == 3, out
    rows = stored_rows(db, pub)
    assert [r["import_wh"] for r in rows] == [123456, 3, 3]
    extra = json.loads(rows[1]["extra"])
    assert (extra["reset"], extra["reset_import_wh"], extra["reset_export_wh"]) == ("counter_dropped", 123456, 0), rows
    assert "reset" not in json.loads(rows[2]["extra"])
    assert_all_verify(rows, pub)


def test_a_reset_confirmed_during_an_exchange_runs_at_once_and_its_record_is_delivered_later(
        tmp_path: Path, coordinator_factory) -> None:
    db = tmp_path / "c.db"
    port = free_udp_port()
    # The coordinator is down at first: every exchange retries for a minute.
    image, pub = provision(tmp_path, db, port, console=True, interval_s=0.05, ack_timeout_s=2.0, max_retransmit=4)
    live = Live(image)
    try:
        live.expect("next seq 1")
        live.command("reset energy", "type YES to confirm")
        # Not after the exchange's minute: the exchange stops for it.
        took = live.command("YES", "energy reset done", timeout=20)
        assert took < 5, live.text
        live.command("reboot", "SUMMARY", timeout=10)
        assert live.finish() == 3
    finally:
        live.kill()
    assert meter_summary(live.text)["delivered"] == 0
    # The coordinator comes up: everything buffered goes out, the reset too.
    coordinator_factory(db=db, port=port)
    cfg = json.loads((image / "config.json").read_text())
    write_image(image, dict(cfg, console=False, max_readings=2, ack_timeout_s=0.2))
    out, _ = boot(image).communicate(timeout=60)
    summary = meter_summary(out)
    assert summary["pending"] == 0 and summary["rejected"] == 0, out
    rows = stored_rows(db, pub)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    resets = [r for r in rows if r["extra"] and json.loads(r["extra"]).get("reset") == "energy_reset"]
    # The record says where the counters went (0); the reading's own counter
    # may already have moved on a slow machine (energy accrues between the
    # reset and the reading), never past the next reading's.
    assert len(resets) == 1, [r["extra"] for r in rows]
    assert json.loads(resets[0]["extra"])["reset_import_wh"] == 0
    assert resets[0]["import_wh"] <= rows[-1]["import_wh"], [(r["seq"], r["import_wh"]) for r in rows]
    assert_all_verify(rows, pub)
