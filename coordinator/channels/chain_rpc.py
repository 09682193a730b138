"""A `ChainBackend` that talks to a real BSV node over JSON-RPC.

What it needs: a BSV node (bitcoind from bitcoin-sv, any recent version)
with `server=1`, `rpcuser`/`rpcpassword` (or a cookie's user:password) and
`rpcallowip` covering the coordinator, reachable at `url`
(e.g. http://127.0.0.1:8332/ for mainnet, :18332 testnet, :18443 regtest).
The user and password are passed separately (the coordinator reads them
from files, see config.py); a user:password@ in `url` is taken out of it,
so no error message or log line carries it.
It uses these calls:

- `sendrawtransaction <hex>` -> txid (the node checks scripts, lock time,
  fees and double spends itself; its refusal becomes a ChainError with the
  node's code and message);
- `gettxout <txid> <n> true` -> the unspent output (mempool included) or null;
- `getblockchaininfo` -> `blocks` (height) and `mediantime` (the time
  nLockTime is judged against);
- `getblockhash <height>` and `getblockheader <hash> true` -> `merkleroot`
  (only as the lookup source beside ARC, to check ARC's merkle proofs);
- `getrawtransaction <txid> 1` -> `confirmations` (absent in the mempool),
  or error -5 when the node does not know it (a confirmed transaction
  outside the node's wallet needs `txindex=1`).

A broadcast the node already knows counts as done: it answers -27
("transaction already in block chain") or -26 with "txn-already-known" /
"txn-already-in-mempool", and a retried close or refund after a crash must
not look like a refusal. Any other -26 (a script or fee failure, a
conflicting spend) stays a ChainError.

Every transaction still passes bitcoinx's interpreter before it gets here
(the wallet and channels check what they build). Calls block (`blocking`):
asyncio code runs them in a thread (`chain.call`).
"""

from __future__ import annotations

import base64
import itertools
import json
import urllib.error
import urllib.request
from typing import Any

from bitcoinx import Script, Tx, TxOutput, hash_to_hex_str

from ..secrets import split_userinfo
from .chain import ChainError, ChainTip
from .txs import Outpoint

COIN = 100_000_000
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27
RPC_INVALID_ADDRESS_OR_KEY = -5  # getrawtransaction: no such transaction
# The -26 reasons that mean "I have it already", not "I refuse it".
ALREADY_KNOWN_REASONS = ("txn-already-known", "txn-already-in-mempool", "already in the mempool")


class NodeRpcError(ChainError):
    """A JSON-RPC error answer; `code` is the node's error code."""

    def __init__(self, method: str, code: Any, message: Any) -> None:
        super().__init__(f"{method}: node refused (code {code}): {message}")
        self.code = code
        self.node_message = str(message)


def already_known(e: NodeRpcError) -> bool:
    """Whether a sendrawtransaction refusal says the node has the tx."""
    if e.code == RPC_VERIFY_ALREADY_IN_CHAIN:
        return True
    return e.code == RPC_VERIFY_REJECTED and any(r in e.node_message.lower() for r in ALREADY_KNOWN_REASONS)


class NodeRpcBackend:
    blocking = True  # each call waits on the network: asyncio code runs it in a thread (chain.call)

    def __init__(self, url: str, user: str = "", password: str = "", timeout: float = 10.0) -> None:
        # Credentials written into the URL are taken out of it: self.url
        # goes into every error message and log line.
        self.url, url_user, url_password = split_userinfo(url)
        if url_user and not user:
            user, password = url_user, url_password
        self.timeout = timeout
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if user else ""
        self._ids = itertools.count(1)

    def call(self, method: str, *params: Any) -> Any:
        body = json.dumps({"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)}).encode()
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        if self._auth:
            req.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            # bitcoind answers RPC errors with HTTP 500 and a JSON body.
            raw = e.read()
            if e.code in (401, 403):
                raise ChainError(f"{method}: node at {self.url} refused the credentials (HTTP {e.code})") from None
            if not raw:
                raise ChainError(f"{method}: node at {self.url} answered HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ChainError(f"{method}: cannot reach the node at {self.url}: {e}") from None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise ChainError(f"{method}: node answered non-JSON: {raw[:200]!r}") from None
        if not isinstance(doc, dict) or "result" not in doc:
            raise ChainError(f"{method}: node answered {str(doc)[:200]}: expected a JSON-RPC response")
        if doc.get("error"):
            err = doc["error"]
            code = err.get("code") if isinstance(err, dict) else None
            msg = err.get("message") if isinstance(err, dict) else err
            raise NodeRpcError(method, code, msg)
        return doc["result"]

    def broadcast(self, tx: Tx) -> str:
        try:
            txid = self.call("sendrawtransaction", tx.to_hex())
        except NodeRpcError as e:
            if already_known(e):
                return str(tx.hex_hash())
            raise
        if txid != tx.hex_hash():
            raise ChainError(f"sendrawtransaction returned txid {txid!r}: expected {tx.hex_hash()}")
        return str(txid)

    def get_output(self, outpoint: Outpoint) -> TxOutput | None:
        res = self.call("gettxout", hash_to_hex_str(outpoint.txid), outpoint.index, True)
        if res is None:
            return None
        try:
            value = round(float(res["value"]) * COIN)
            script = Script(bytes.fromhex(res["scriptPubKey"]["hex"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ChainError(f"gettxout {outpoint}: unexpected answer {str(res)[:200]} ({e})") from None
        return TxOutput(value, script)

    def confirmations(self, txid: str) -> int:
        try:
            res = self.call("getrawtransaction", txid, 1)
        except NodeRpcError as e:
            if e.code == RPC_INVALID_ADDRESS_OR_KEY:
                return -1
            raise
        if not isinstance(res, dict):
            raise ChainError(f"getrawtransaction {txid}: unexpected answer {str(res)[:200]}")
        try:
            return int(res.get("confirmations") or 0)
        except (TypeError, ValueError) as e:
            raise ChainError(f"getrawtransaction {txid}: unexpected answer {str(res)[:200]} ({e})") from None

    def tip(self) -> ChainTip:
        res = self.call("getblockchaininfo")
        try:
            return ChainTip(int(res["blocks"]), int(res["mediantime"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ChainError(f"getblockchaininfo: unexpected answer {str(res)[:200]} ({e})") from None

    def merkle_root(self, height: int) -> str:
        """The merkle root of the block at `height` on the node's chain (to
        check a merkle proof another source gives, see chain_arc.py)."""
        block_hash = self.call("getblockhash", height)
        res = self.call("getblockheader", block_hash, True)
        try:
            return str(res["merkleroot"])
        except (KeyError, TypeError) as e:
            raise ChainError(f"getblockheader {str(block_hash)[:80]}: unexpected answer {str(res)[:200]} ({e})") from None
