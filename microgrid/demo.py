"""`microgrid demo`: the system working end to end on one machine.

For now: a coordinator and one meter running the real firmware image in the
MicroPython unix port exchange signed readings for a few seconds over
loopback CoAP; then a summary of what was stored (also as JSON).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bitcoinx import PrivateKey


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_quickstart(out_dir: Path, readings: int, speed: float, interval_s: float, verbose: bool) -> dict[str, Any]:
    from microgrid.coordinator.store.database import open_database
    from microgrid.coordinator.store.readings import ReadingStore
    from microgrid.flash.image import write_image
    from microgrid.flash.unix_port import boot
    from microgrid.shared import reading as reading_format

    out_dir.mkdir(parents=True, exist_ok=True)
    db_path = out_dir / "coordinator.db"
    port = free_udp_port()
    key = PrivateKey.from_random()
    public_key = key.public_key.to_bytes(compressed=True)

    store = ReadingStore(open_database(db_path))
    device, _ = store.register_device(public_key, "demo-meter-1")
    store.db.close()

    coordinator_log = open(out_dir / "coordinator.log", "w")
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "microgrid.cli", "coordinator", "run", "--db", str(db_path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=coordinator_log,
        text=True,
    )
    meter_out = ""
    started = time.time()
    try:
        line = coordinator.stdout.readline() if coordinator.stdout else ""
        if not line.startswith("READY"):
            raise RuntimeError(f"coordinator did not start: {line.strip()}")
        if verbose:
            print(f"coordinator: {line.strip()} (database {db_path})")
        image = write_image(
            out_dir / "meter-1",
            {
                "device_name": "demo-meter-1",
                "coordinator_port": port,
                "interval_s": interval_s,
                "clock_speed": speed,
                # Yesterday 10:00 UTC: the accelerated clock stays in the
                # past (the coordinator refuses readings from the future)
                # and starts in daylight, so the solar profile shows.
                "clock_start": int(time.time() // 86400 * 86400 - 86400 + 10 * 3600),
                "max_readings": readings,
                "ack_timeout_s": 0.5,
                "meter": {"type": "simulated", "profile": "prosumer", "seed": 1},
            },
            key.to_bytes(),
        )
        meter = boot(image)
        try:
            meter_out, _ = meter.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            meter.kill()
            meter_out, _ = meter.communicate()
    finally:
        coordinator.terminate()
        try:
            coordinator.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            coordinator.kill()
        coordinator_log.close()
    elapsed = time.time() - started

    meter_summary: dict[str, Any] = {}
    for line in meter_out.splitlines():
        if line.startswith("SUMMARY "):
            meter_summary = json.loads(line[len("SUMMARY "):])
    store = ReadingStore(open_database(db_path))
    rows = list(store.readings(device.device_id))
    verified = 0
    for row in rows:
        r = reading_format.parse(row["cose"])
        if reading_format.verify(r, public_key):
            verified += 1
    store.db.close()
    first, last = (rows[0], rows[-1]) if rows else ({}, {})
    return {
        "database": str(db_path),
        "device_id": device.device_id,
        "readings_produced": meter_summary.get("produced", 0),
        "readings_stored": len(rows),
        "readings_verified": verified,
        "readings_rejected": meter_summary.get("rejected", 0),
        "retransmissions": meter_summary.get("retransmissions", 0),
        "import_wh": (last.get("import_wh", 0) - first.get("import_wh", 0)) if rows else 0,
        "export_wh": (last.get("export_wh", 0) - first.get("export_wh", 0)) if rows else 0,
        "simulated_hours": round((last.get("time", 0) - first.get("time", 0)) / 3600, 2) if rows else 0,
        "elapsed_s": round(elapsed, 2),
    }


def _run(args: argparse.Namespace) -> int:
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="microgrid-demo-"))
    try:
        summary = run_quickstart(out_dir, args.readings, args.speed, args.interval, not args.json)
    except Exception as e:  # noqa: BLE001 - the demo reports any failure in one line
        print(f"error: demo failed: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"meter {summary['device_id']}: produced {summary['readings_produced']} readings, "
            f"coordinator stored {summary['readings_stored']}, verified {summary['readings_verified']}, "
            f"rejected {summary['readings_rejected']}\n"
            f"simulated {summary['simulated_hours']} h: imported {summary['import_wh']} Wh, exported {summary['export_wh']} Wh\n"
            f"database: {summary['database']} (took {summary['elapsed_s']} s)"
        )
    ok = summary["readings_stored"] == summary["readings_produced"] == summary["readings_verified"] > 0
    return 0 if ok else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a coordinator and a MicroPython meter on loopback, then summarise")
    p.add_argument("--readings", type=int, default=100, help="readings the meter produces (default 100)")
    p.add_argument("--interval", type=float, default=0.05, help="real seconds between readings (default 0.05)")
    p.add_argument("--speed", type=float, default=720.0, help="simulated clock speed-up (default 720: a minute per 0.08 s)")
    p.add_argument("--out", help="folder for the database and meter image (default: a new temporary folder)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run)
