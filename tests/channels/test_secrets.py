"""Secrets stay secret: the node's RPC credentials are settings of their
own (files), reach the node, and never a URL that is logged, an error, the
console or a peer; a peer's error answer carries a code and nothing from
our environment."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from microgrid.coordinator.app import open_chain
from microgrid.coordinator.channels.chain import ChainError, LocalLedger
from microgrid.coordinator.channels.chain_rpc import NodeRpcBackend
from microgrid.coordinator.channels.messages import decode
from microgrid.coordinator.config import Config, ConfigError, from_dict
from microgrid.coordinator.console import Console
from microgrid.coordinator.secrets import redact, split_userinfo

from ..conftest import free_udp_port
from .conftest import FixedClock, make_node
from .test_chain_rpc import node, signed_tx  # noqa: F401 - the fake node fixture

PASSWORD = "hunter2-Zq9"


def rpc_config(tmp_path: Path, url: str, **channels: str) -> Config:
    return from_dict({"store": {"path": str(tmp_path / "c.db")},
                      "channels": {"chain": f"rpc:{url}", **channels}})


def test_credentials_in_the_rpc_url_are_refused_without_echoing_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        rpc_config(tmp_path, f"http://user:{PASSWORD}@127.0.0.1:8332")
    assert "rpc_password_file" in str(e.value) and PASSWORD not in str(e.value)
    with pytest.raises(ConfigError) as e:
        rpc_config(tmp_path, f"ftp://user:{PASSWORD}@127.0.0.1:8332")
    assert PASSWORD not in str(e.value)
    with pytest.raises(ConfigError, match="go together"):
        rpc_config(tmp_path, "http://127.0.0.1:8332", rpc_user="u")
    with pytest.raises(ConfigError, match="cookie"):
        rpc_config(tmp_path, "http://127.0.0.1:8332", rpc_user="u", rpc_password_file="p",
                   rpc_cookie_file="c")


@pytest.mark.parametrize("how", ["password_file", "cookie_file"])
def test_the_node_gets_the_credentials_from_their_files(tmp_path: Path, node, how: str) -> None:  # noqa: F811
    fake, url = node
    if how == "password_file":
        (tmp_path / "rpc.password").write_text(PASSWORD + "\n")
        cfg = rpc_config(tmp_path, url, rpc_user="microgrid", rpc_password_file="rpc.password")
        user = "microgrid"
    else:
        (tmp_path / ".cookie").write_text(f"__cookie__:{PASSWORD}")
        cfg = rpc_config(tmp_path, url, rpc_cookie_file=".cookie")
        user = "__cookie__"
    backend = open_chain(cfg, FixedClock())
    fake.answers["getblockchaininfo"] = (200, {"result": {"blocks": 5, "mediantime": 1_700_000_000},
                                               "error": None, "id": 1})
    assert backend.tip().height == 5
    import base64
    assert fake.auth[-1] == "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    # The console shows the settings without the secret, or where it is.
    shown = Console(SimpleNamespace(config=cfg, store=None)).handle("config")
    assert PASSWORD not in shown and "chain = " in shown


def test_a_url_with_credentials_given_to_the_backend_loses_them_from_every_message(caplog) -> None:
    port = free_udp_port()  # nothing listens there
    backend = NodeRpcBackend(f"http://user:{PASSWORD}@127.0.0.1:{port}/", timeout=2)
    assert PASSWORD not in backend.url and backend._auth
    with pytest.raises(ChainError) as e:
        backend.tip()
    assert PASSWORD not in str(e.value) and f"127.0.0.1:{port}" in str(e.value)
    assert split_userinfo("http://[::1]:8332/x") == ("http://[::1]:8332/x", "", "")
    assert split_userinfo("http://a%40b:p%3Aq@[::1]:8332/") == ("http://[::1]:8332/", "a@b", "p:q")


class LeakyChain(LocalLedger):
    """A backend whose failure text names our node and its password, as a
    careless error message from a library might."""

    leak = False

    def get_output(self, outpoint):  # type: ignore[no-untyped-def]
        if not self.leak:
            return super().get_output(outpoint)
        raise ChainError(f"gettxout: cannot reach http://user:{PASSWORD}@10.1.2.3:8332 from /home/pi/secret")


def test_error_answers_to_peers_carry_a_code_and_nothing_local(tmp_path: Path, caplog) -> None:
    clock = FixedClock()
    ledger = LeakyChain(clock=clock)
    a = make_node(tmp_path, "a", ledger, clock)
    b = make_node(tmp_path, "b", ledger, clock)
    from microgrid.coordinator.channels.wallet import Utxo
    index, script = a.wallet.receive_script()
    a.wallet.add_utxo(Utxo(ledger.faucet(script, 500_000), 500_000, index))
    opened = a.open_request("coap://b", 20_000, 7_200, b.public_key)
    msg = opened
    while msg is not None:
        msg = a.on_reply(msg, b.handle(msg.wire))
    ledger.leak = True
    msg = a.open_request("coap://b", 100_000, 7_200, b.public_key)
    caplog.set_level(logging.WARNING, logger="microgrid.channels")
    while msg is not None and msg.type != "funded":
        msg = a.on_reply(msg, b.handle(msg.wire))
    answer = decode(b.handle(msg.wire))  # `funded`: the payee asks its chain, which fails
    assert answer.type == "error" and answer.body["code"] == "chain"
    assert PASSWORD not in answer.body["detail"] and "10.1.2.3" not in answer.body["detail"]
    assert "/home/pi" not in answer.body["detail"]
    assert "10.1.2.3" in caplog.text  # the technician's log keeps the detail
    # A failure of our disk: the code, not the path or the exception.
    b.store.conn.close()
    bad = decode(b.handle(a.pay_request(opened.channel_id, 1_000).wire))
    assert bad.body["code"] == "internal"
    assert "sqlite" not in bad.body["detail"].lower() and str(tmp_path) not in bad.body["detail"]


def test_console_config_never_prints_secrets() -> None:
    cfg = Config()
    cfg.mqtt.password = PASSWORD
    cfg.ingest.installer_token = PASSWORD
    cfg.channels.chain = f"rpc:http://user:{PASSWORD}@127.0.0.1:8332"  # as an old config had it
    cfg.channels.rpc_password_file = "/etc/microgrid/rpc.password"
    shown = Console(SimpleNamespace(config=cfg, store=None)).handle("config")
    assert PASSWORD not in shown
    assert 'chain = "rpc:http://***@127.0.0.1:8332"' in shown and 'rpc_password_file = "(set)"' in shown
    assert redact({"buses": {"a": {"token": "x", "url": f"https://u:{PASSWORD}@h/"}}}) == \
        {"buses": {"a": {"token": "(set)", "url": "https://***@h/"}}}


def test_example_config_has_no_credentials_in_its_url() -> None:
    import tomllib

    example = Path(__file__).parents[2] / "coordinator" / "service" / "coordinator.example.toml"
    raw = tomllib.loads(example.read_text())
    assert "@" not in raw["channels"]["chain"]
    assert os.path.basename(raw["channels"]["rpc_password_file"])
