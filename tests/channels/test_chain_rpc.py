"""The JSON-RPC backend's requests and its handling of a node's answers,
against a loopback HTTP server playing the node."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Iterator

import pytest
from bitcoinx import PrivateKey, TxOutput

from microgrid.coordinator.channels.chain import ChainError, LocalLedger
from microgrid.coordinator.channels.chain_rpc import NodeRpcBackend
from microgrid.coordinator.channels.txs import Outpoint
from microgrid.coordinator.channels.wallet import Wallet

from .conftest import fund


class FakeNode:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.answers: dict[str, tuple[int, Any]] = {}


@pytest.fixture
def node() -> Iterator[tuple[FakeNode, str]]:
    fake = FakeNode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append(body)
            fake.auth.append(self.headers.get("Authorization"))
            status, payload = fake.answers.get(body["method"], (200, {"result": None, "error": None, "id": body["id"]}))
            raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *a: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def signed_tx():
    led = LocalLedger()
    w = Wallet.generate()
    fund(w, led, 10_000)
    return w.build_payment([TxOutput(1_000, PrivateKey.from_random().public_key.P2PKH_script())])


def test_broadcast_sends_raw_hex_with_basic_auth(node) -> None:
    fake, url = node
    tx = signed_tx()
    fake.answers["sendrawtransaction"] = (200, {"result": tx.hex_hash(), "error": None, "id": 1})
    backend = NodeRpcBackend(url, "user", "secret")
    assert backend.broadcast(tx) == tx.hex_hash()
    req = fake.requests[-1]
    assert req["method"] == "sendrawtransaction" and req["params"] == [tx.to_hex()]
    assert fake.auth[-1] == "Basic " + base64.b64encode(b"user:secret").decode()


def test_node_refusal_becomes_chain_error_with_its_message(node) -> None:
    fake, url = node
    fake.answers["sendrawtransaction"] = (500, {"result": None, "id": 1,
                                                "error": {"code": -26, "message": "64: non-final"}})
    with pytest.raises(ChainError, match="code -26.*non-final"):
        NodeRpcBackend(url).broadcast(signed_tx())
    fake.answers["sendrawtransaction"] = (401, b"")
    with pytest.raises(ChainError, match="credentials"):
        NodeRpcBackend(url).broadcast(signed_tx())
    fake.answers["sendrawtransaction"] = (200, b"<html>")
    with pytest.raises(ChainError, match="non-JSON"):
        NodeRpcBackend(url).broadcast(signed_tx())
    fake.answers["sendrawtransaction"] = (200, {"result": "00" * 32, "error": None, "id": 1})
    with pytest.raises(ChainError, match="expected"):
        NodeRpcBackend(url).broadcast(signed_tx())


def test_gettxout_and_tip_are_parsed(node) -> None:
    fake, url = node
    script = PrivateKey.from_random().public_key.P2PKH_script()
    fake.answers["gettxout"] = (200, {"result": {"value": 0.00012345, "scriptPubKey": {"hex": script.to_hex()}},
                                      "error": None, "id": 1})
    fake.answers["getblockchaininfo"] = (200, {"result": {"blocks": 850_000, "mediantime": 1_720_000_000},
                                               "error": None, "id": 1})
    b = NodeRpcBackend(url)
    out = b.get_output(Outpoint(bytes(range(32)), 3))
    assert out.value == 12_345 and bytes(out.script_pubkey) == bytes(script)
    req = fake.requests[-1]
    assert req["method"] == "gettxout" and req["params"][1:] == [3, True]
    assert b.tip().height == 850_000 and b.tip().time == 1_720_000_000
    fake.answers["gettxout"] = (200, {"result": None, "error": None, "id": 1})
    assert b.get_output(Outpoint(bytes(32), 0)) is None
    fake.answers["gettxout"] = (200, {"result": {"value": "x"}, "error": None, "id": 1})
    with pytest.raises(ChainError, match="unexpected"):
        b.get_output(Outpoint(bytes(32), 0))


def test_unreachable_node_is_a_chain_error() -> None:
    from ..conftest import free_udp_port
    with pytest.raises(ChainError, match="cannot reach"):
        NodeRpcBackend(f"http://127.0.0.1:{free_udp_port()}/", timeout=2).tip()


@pytest.mark.parametrize("code,message", [
    (-27, "Transaction already in block chain"),
    (-26, "257: txn-already-known"),
    (-26, "258: txn-already-in-mempool"),
])
def test_rebroadcast_of_a_known_tx_counts_as_done(node, code: int, message: str) -> None:
    """A close or refund retried after a crash must not read as refused:
    a node answers -27 or -26 "already known" to a tx it has."""
    fake, url = node
    tx = signed_tx()
    fake.answers["sendrawtransaction"] = (500, {"result": None, "id": 1, "error": {"code": code, "message": message}})
    assert NodeRpcBackend(url).broadcast(tx) == tx.hex_hash()


@pytest.mark.parametrize("message", ["16: mandatory-script-verify-flag-failed", "258: txn-mempool-conflict",
                                     "64: non-final"])
def test_other_rejections_stay_errors(node, message: str) -> None:
    fake, url = node
    fake.answers["sendrawtransaction"] = (500, {"result": None, "id": 1,
                                                "error": {"code": -26, "message": message}})
    with pytest.raises(ChainError, match=message.split(": ")[1]):
        NodeRpcBackend(url).broadcast(signed_tx())
    fake.answers["sendrawtransaction"] = (500, {"result": None, "id": 1,
                                                "error": {"code": -25, "message": "Missing inputs"}})
    with pytest.raises(ChainError, match="Missing inputs"):
        NodeRpcBackend(url).broadcast(signed_tx())


def test_confirmations_from_getrawtransaction(node) -> None:
    fake, url = node
    b = NodeRpcBackend(url)
    fake.answers["getrawtransaction"] = (200, {"result": {"txid": "ab" * 32, "confirmations": 3}, "error": None, "id": 1})
    assert b.confirmations("ab" * 32) == 3
    assert fake.requests[-1]["params"] == ["ab" * 32, 1]
    fake.answers["getrawtransaction"] = (200, {"result": {"txid": "ab" * 32}, "error": None, "id": 1})
    assert b.confirmations("ab" * 32) == 0  # in the mempool
    fake.answers["getrawtransaction"] = (500, {"result": None, "id": 1, "error": {
        "code": -5, "message": "No such mempool or blockchain transaction"}})
    assert b.confirmations("ab" * 32) == -1
    fake.answers["getrawtransaction"] = (500, {"result": None, "id": 1, "error": {"code": -28, "message": "Loading"}})
    with pytest.raises(ChainError, match="Loading"):
        b.confirmations("ab" * 32)
