"""Running `microgrid flash` as the installer does (a child process) and
a coordinator with an installer token."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TOKEN = "install-day-2c91e"


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def result(self) -> dict:
        return json.loads(self.out.strip().splitlines()[-1])


def flash(*args: str, env: dict | None = None, timeout: float = 120) -> Run:
    proc = subprocess.run([sys.executable, "-m", "microgrid.flash.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def coordinator_config(tmp_path: Path, token: str = TOKEN) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text(f'[ingest]\ninstaller_token = "{token}"\n')
    return path


def token_file(tmp_path: Path, token: str = TOKEN) -> Path:
    path = tmp_path / "installer.token"
    path.write_text(token + "\n")
    return path


def meter_config(tmp_path: Path, **overrides: object) -> Path:
    cfg: dict = {
        "device_name": "flat-3",
        "interval_s": 0.01,
        "clock_start": 1_700_000_000,
        "clock_speed": 60,
        "ack_timeout_s": 0.2,
        "retry_after_s": 0.2,
        "meter": {"type": "simulated", "profile": "prosumer", "seed": 5},
    }
    cfg.update(overrides)
    path = tmp_path / "meter.json"
    path.write_text(json.dumps(cfg))
    return path
