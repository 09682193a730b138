"""A loopback ARC for tests: ARC's documented requests, answers and error
codes (https://bitcoin-sv.github.io/arc/) in front of a `LocalLedger`.

- POST /v1/tx, JSON `{"rawTx": hex}`, `Authorization: Bearer TOKEN`:
  200 with `{txid, txStatus, blockHeight, blockHash, merklePath,
  extraInfo, competingTxs, timestamp}`; a tx it knows already is answered
  200 with its current status (SEEN_ON_NETWORK or MINED); a refusal is an
  RFC 7807 body `{type, title, status, detail, txid, extraInfo}` with
  ARC's codes: 400 bad request, 461 unlocking scripts, 465 fees,
  466 conflicting spend; a non-final tx is answered 200 REJECTED with the
  node's reason in extraInfo (ARC relays the node's refusal that way);
- GET /v1/tx/{txid}: the same status document, 404 when unknown; a mined
  tx carries a BUMP merkle path to its block's root (each block's leaves
  start with a made-up coinbase, as real blocks do);
- 401 with an error body when the token is missing or wrong.

`mode` makes it misbehave: "malformed" (200 with a non-JSON body),
"no-status" (200 JSON without txStatus), "slow" (answers after
`delay_s`), "bad-proof" (a merkle path to another tree), "status:X" (every tx has
txStatus X, with a competing tx). The server runs
in a daemon thread and shuts itself down after `lifetime_s` if the test
did not.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bitcoinx import Tx
from bsv.merkle_path import MerklePath

from microgrid.coordinator.channels.chain import ChainError, ChainTip, LocalLedger
from microgrid.coordinator.channels.txs import Outpoint

ERRORS_URL = "https://bitcoin-sv.github.io/arc/#/errors?id=_"


def sha256d(b: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def block_leaves(ledger: LocalLedger, height: int) -> list[str]:
    coinbase = sha256d(b"coinbase %d" % height)[::-1].hex()
    rows = ledger.db.execute("SELECT txid FROM txs WHERE height=? ORDER BY rowid", (height,)).fetchall()
    return [coinbase] + [r[0] for r in rows]


def tree(leaves: list[str]) -> list[list[bytes]]:
    """The levels of a block's merkle tree, leaves first (internal byte order)."""
    levels = [[bytes.fromhex(t)[::-1] for t in leaves]]
    while len(levels[-1]) > 1:
        lv = levels[-1] + ([levels[-1][-1]] if len(levels[-1]) % 2 else [])
        levels.append([sha256d(lv[i] + lv[i + 1]) for i in range(0, len(lv), 2)])
    return levels


def merkle_root(leaves: list[str]) -> str:
    return tree(leaves)[-1][0][::-1].hex()


def bump(height: int, leaves: list[str], txid: str) -> str:
    """BRC-74 merkle path of `txid` in a block with `leaves`."""
    levels = tree(leaves)
    i = leaves.index(txid)
    path: list[list[dict[str, Any]]] = []
    for h in range(len(levels) - 1):
        sib = (i >> h) ^ 1
        leaf: dict[str, Any] = ({"offset": sib, "hash_str": levels[h][sib][::-1].hex()} if sib < len(levels[h])
                                else {"offset": sib, "duplicate": True})
        level = [leaf]
        if h == 0:
            level.append({"offset": i, "hash_str": txid, "txid": True})
        path.append(sorted(level, key=lambda x: x["offset"]))
    return MerklePath(height, path).to_hex()  # type: ignore[arg-type]


class FakeArc:
    def __init__(self, ledger: LocalLedger, token: str = "", lifetime_s: float = 120.0) -> None:
        self.ledger = ledger
        self.token = token
        self.mode = ""
        self.stopped = False
        self.delay_s = 3.0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []  # method, path, headers, body
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake._serve(self, "POST")

            def do_GET(self) -> None:
                fake._serve(self, "GET")

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        self.stopped = True
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    # -- answers -------------------------------------------------------------
    def status_doc(self, txid: str) -> dict[str, Any] | None:
        row = self.ledger.db.execute("SELECT height FROM txs WHERE txid=?", (txid,)).fetchone()
        if row is None:
            return None
        doc: dict[str, Any] = {"txid": txid, "txStatus": "SEEN_ON_NETWORK", "blockHash": "", "blockHeight": 0,
                               "merklePath": "", "extraInfo": "", "competingTxs": None,
                               "timestamp": "2026-12-03T10:00:00Z"}
        if row[0] is not None:
            height = int(row[0])
            leaves = block_leaves(self.ledger, height)
            if self.mode == "bad-proof":
                leaves = leaves + [sha256d(b"other")[::-1].hex()]
            doc.update(txStatus="MINED", blockHeight=height, blockHash=sha256d(b"%d" % height)[::-1].hex(),
                       merklePath=bump(height, leaves, txid))
        return doc

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n) if n else b""
        self.requests.append((method, h.path, dict(h.headers.items()), body))
        if self.mode == "slow":
            time.sleep(self.delay_s)
        if self.stopped:  # the test is over (its ledger may be closed): drop the connection
            return
        if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(h, 401, "Unauthorized", "Security requirements failed", "")
        if self.mode == "malformed":
            return self._send(h, 200, b"<html>gateway says hi</html>", "text/html")
        if self.mode == "no-status":
            return self._send_json(h, 200, {"txid": "00" * 32, "title": "OK"})
        if self.mode.startswith("status:"):  # every tx answered with this txStatus (POST and GET)
            txid = h.path[len("/v1/tx/"):] if method == "GET" else str(Tx.from_hex(json.loads(body)["rawTx"]).hex_hash())
            return self._send_json(h, 200, {"txid": txid, "txStatus": self.mode[len("status:"):], "blockHeight": 0,
                                            "extraInfo": "", "competingTxs": ["ab" * 32], "merklePath": ""})
        if method == "GET" and h.path.startswith("/v1/tx/"):
            doc = self.status_doc(h.path[len("/v1/tx/"):])
            if doc is None:
                return self._error(h, 404, "Not found", "The requested resource could not be found", "")
            return self._send_json(h, 200, doc)
        if method == "POST" and h.path == "/v1/tx":
            return self._submit(h, body)
        return self._error(h, 404, "Not found", "no such endpoint", "")

    def _submit(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        if h.headers.get("Content-Type") != "application/json":
            return self._error(h, 400, "Bad request", "expected application/json", "")
        try:
            tx = Tx.from_hex(json.loads(body)["rawTx"])
        except Exception:
            return self._error(h, 400, "Bad request", "The request seems to be malformed and cannot be processed", "")
        txid = str(tx.hex_hash())
        known = self.status_doc(txid)
        if known is not None:
            return self._send_json(h, 200, known)  # ARC answers a resubmission with the tx's status
        try:
            self.ledger.broadcast(tx)
        except ChainError as e:
            msg = str(e)
            if "already spent" in msg:
                return self._error(h, 466, "Conflicting tx found",
                                   "Transaction is invalid because the network has already seen a tx which spends "
                                   "the same utxo", "arc error 466: double spend", txid)
            if "fee " in msg:
                return self._error(h, 465, "Fee too low", "Fees are insufficient", "arc error 465: " + msg, txid)
            if "not final" in msg:
                doc = {"txid": txid, "txStatus": "REJECTED", "blockHash": "", "blockHeight": 0, "merklePath": "",
                       "extraInfo": "64: non-final", "competingTxs": None, "timestamp": "2026-12-03T10:00:00Z"}
                return self._send_json(h, 200, doc)
            return self._error(h, 461, "Malformed transaction",
                               "One or more of the unlocking scripts did not validate", "arc error 461: " + msg, txid)
        doc = self.status_doc(txid)
        assert doc is not None
        return self._send_json(h, 200, doc)

    def _error(self, h: BaseHTTPRequestHandler, status: int, title: str, detail: str, extra: str,
               txid: str | None = None) -> None:
        self._send_json(h, status, {"type": f"{ERRORS_URL}{status}", "title": title, "status": status,
                                    "detail": detail, "instance": None, "txid": txid, "extraInfo": extra})

    def _send_json(self, h: BaseHTTPRequestHandler, status: int, doc: Any) -> None:
        self._send(h, status, json.dumps(doc).encode(), "application/json")

    def _send(self, h: BaseHTTPRequestHandler, status: int, raw: bytes, ctype: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)


class LedgerLookup:
    """The lookup source beside ARC, as an SV node would answer it: tip
    and unspent outputs from the ledger, merkle roots of its blocks with
    the same leaves the fake ARC proves against."""

    def __init__(self, ledger: LocalLedger) -> None:
        self.ledger = ledger

    def tip(self) -> ChainTip:
        return self.ledger.tip()

    def get_output(self, outpoint: Outpoint) -> Any:
        return self.ledger.get_output(outpoint)

    def merkle_root(self, height: int) -> str:
        return merkle_root(block_leaves(self.ledger, height))
