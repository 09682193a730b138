"""Config validation names the key, the value and what is allowed; the CLI
turns errors into one line and an exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from microgrid.coordinator.config import ConfigError, load


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_are_valid() -> None:
    config = load(None)
    assert config.coap.host == "127.0.0.1" and config.coap.port == 5683


def test_a_full_file_loads(tmp_path: Path) -> None:
    config = load(write(tmp_path, '[coap]\nhost = "::"\nport = 5999\n[store]\npath = "/var/lib/x.db"\n[log]\nlevel = "debug"\n'))
    assert (config.coap.host, config.coap.port, config.store.path, config.log.level) == ("::", 5999, "/var/lib/x.db", "debug")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[coap]\nport = 70000\n", "coap.port=70000: expected an integer in 0..65535"),
        ('[coap]\nport = "5683"\n', "coap.port='5683': expected int"),
        ('[coap]\nhost = "example.org"\n', "coap.host='example.org': expected an IP address"),
        ("[coap]\nprot = 1\n", "coap.prot: unknown setting; allowed: host, max_tcp_connections, port, transports, ws_origins"),
        ("[nonsense]\n", "[nonsense]: unknown section"),
        ('[log]\nlevel = "loud"\n', "log.level='loud': expected one of debug, info, warning, error"),
        ("[coap\n", "not valid TOML"),
        ("[channels]\nstream_poll_s = -1\n", "channels.stream_poll_s=-1: expected an integer in 0..3600"),
    ],
)
def test_bad_values_name_key_value_and_allowed(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, text))
    assert message in str(e.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "absent.toml")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "microgrid.cli", *args], capture_output=True, text=True, timeout=60)


def test_check_config_exit_status(tmp_path: Path) -> None:
    good = cli("coordinator", "check-config", "--config", str(write(tmp_path, "[coap]\nport = 5700\n")))
    assert good.returncode == 0 and "config ok" in good.stdout
    bad = cli("coordinator", "check-config", "--config", str(write(tmp_path, "[coap]\nport = -1\n")))
    assert bad.returncode == 2 and bad.stderr.startswith("error: coap.port=-1")


def test_register_device_validates_the_key_and_is_idempotent(tmp_path: Path) -> None:
    from microgrid.shared import secp256k1

    db = str(tmp_path / "c.db")
    pub = secp256k1.public_key(bytes(range(1, 33))).hex()
    first = cli("coordinator", "register-device", "--db", db, "--pubkey", pub, "--name", "kitchen", "--json")
    assert first.returncode == 0
    result = json.loads(first.stdout)
    assert result["created"] is True and result["name"] == "kitchen" and len(result["device_id"]) == 16
    again = cli("coordinator", "register-device", "--db", db, "--pubkey", pub, "--json")
    assert json.loads(again.stdout)["created"] is False
    for bad in ("zz", "02" + "00" * 32, pub[:-2]):
        r = cli("coordinator", "register-device", "--db", db, "--pubkey", bad)
        assert r.returncode == 2 and "is not a secp256k1 public key" in r.stderr


def test_run_reports_a_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        r = cli("coordinator", "run", "--db", str(tmp_path / "c.db"), "--port", str(port))
    assert r.returncode == 1 and "cannot serve" in r.stderr


def test_the_example_config_shipped_for_installers_is_valid() -> None:
    import microgrid.coordinator

    example = Path(microgrid.coordinator.__file__).parent / "service" / "coordinator.example.toml"
    config = load(example)
    assert config.market.enabled and config.channels.enabled and config.overlay.enabled
    assert config.modbus.devices["grid"]["model"] == "sdm630"


def test_market_without_overlay_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="market.enabled = true needs overlay.enabled and channels.enabled"):
        load(write(tmp_path, '[market]\nenabled = true\nzone = "z"\n'))


def test_backup_command_copies_database_and_key(tmp_path: Path) -> None:
    from microgrid.shared import secp256k1

    db = str(tmp_path / "c.db")
    pub = secp256k1.public_key(bytes(range(1, 33))).hex()
    assert cli("coordinator", "register-device", "--db", db, "--pubkey", pub).returncode == 0
    (tmp_path / "coordinator.key").write_text("11" * 32 + "\n")
    r = cli("coordinator", "backup", "--db", db, "--to", str(tmp_path / "bak"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "bak" / "coordinator.db").exists() and (tmp_path / "bak" / "coordinator.key").stat().st_mode & 0o077 == 0
    missing = cli("coordinator", "backup", "--db", str(tmp_path / "nope.db"), "--to", str(tmp_path / "bak2"))
    assert missing.returncode == 1 and "no such database" in missing.stderr
