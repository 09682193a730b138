"""A `ChainBackend` on ARC, BSV's transaction processor, paired with a
second source for what ARC does not serve.

ARC (https://bitcoin-sv.github.io/arc/, run by miners such as TAAL and
GorillaPool) is the transaction processor of BSV: it takes a transaction
(POST /v1/tx), relays it to the miners, and answers what became of it
(GET /v1/tx/{txid}: `txStatus`, `blockHeight`, and once mined a BUMP
`merklePath`). It has no UTXO lookup and no chain tip, so `ArcBackend`
composes two sources behind the one interface:

- ARC: `broadcast`, and `confirmations` (from the status; a MINED
  status's merkle path must lead from the txid to the root of the block
  at that height as the lookup source has it, or the answer is refused);
- the lookup source (an SV Node's JSON-RPC, `NodeRpcBackend`): `tip` and
  `get_output` (the node sees the mempool ARC relays to).

The ARC protocol itself (request headers, the JSON body `{"rawTx": hex}`,
the answer's shape, the status categories) is the official `bsv-sdk`'s
`ARC` broadcaster (`sync_broadcast`, `check_transaction_status`): it
follows ARC's API as its maintainers change it, and the same package
already checks every channel transaction in the tests. What we add is
what the channels need from the answers:

- a broadcast ARC already knows counts as done: ARC answers a resubmission
  with 200 and the transaction's current status (SEEN_ON_NETWORK, MINED..);
- REJECTED, DOUBLE_SPEND_ATTEMPTED and the 46x error codes (461 scripts,
  465 fee, 466 conflicting spend, ...) are refusals: a ChainError with
  ARC's code, title and extraInfo;
- 401/403 say the API token was refused, and nothing of the token (which
  is read from a file, sent only as `Authorization: Bearer`);
- a timeout, an unreachable ARC, an answer without the expected fields are
  ChainErrors saying so; the lifecycle retries at its next tick;
- for `confirmations`, a contested (DOUBLE_SPEND_ATTEMPTED), rejected or
  unknown transaction is not on the chain (-1): a funding in that state
  stops the channel's updates, as one that vanished does.

Transactions go as plain raw hex: ARC enriches them to its extended format
from the parents it knows (our inputs are on the chain already); one it
cannot enrich is refused with 460.

Calls block on the network (`blocking = True`): asyncio code runs them in
a thread (`chain.call`).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from bitcoinx import Tx, TxOutput

from ..secrets import split_userinfo
from .chain import ChainError, ChainTip
from .txs import Outpoint

# What ARC's statuses mean for `confirmations` (bsv-sdk groups them alike:
# ARC_PROGRESSING_TX_STATUSES, ARC_WARNING_TX_STATUSES).
IN_MEMPOOL = frozenset({
    "QUEUED", "RECEIVED", "STORED", "ANNOUNCED_TO_NETWORK", "REQUESTED_BY_NETWORK", "SENT_TO_NETWORK",
    "ACCEPTED_BY_NETWORK", "SEEN_IN_ORPHAN_MEMPOOL", "SEEN_ON_NETWORK", "MINED_IN_STALE_BLOCK",
})
MINED = frozenset({"MINED", "IMMUTABLE"})
NOT_ON_CHAIN = frozenset({"UNKNOWN", "REJECTED", "DOUBLE_SPEND_ATTEMPTED", "ERROR", "INVALID", "MALFORMED"})
# A broadcast answered with one of these is refused, whatever the HTTP code.
REFUSED = frozenset({"REJECTED", "DOUBLE_SPEND_ATTEMPTED", "ERROR", "INVALID", "MALFORMED"})


class LookupSource(Protocol):
    """What ARC lacks: the chain tip, unspent outputs, block merkle roots."""

    def tip(self) -> ChainTip: ...

    def get_output(self, outpoint: Outpoint) -> TxOutput | None: ...

    def merkle_root(self, height: int) -> str: ...


class ArcError(ChainError):
    """ARC refused or failed; `code` is ARC's (HTTP status, 46x, or a txStatus)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class ArcBackend:
    blocking = True

    def __init__(self, url: str, lookup: LookupSource, token: str = "", timeout: float = 10.0) -> None:
        from bsv.broadcasters.arc import ARC, ARCConfig
        from bsv.http_client import SyncHttpClient

        # No credentials in the URL (they would be logged): config refuses
        # them; this drops any that reach here anyway.
        self.url = split_userinfo(url)[0].rstrip("/")
        self.lookup = lookup
        self.timeout = timeout
        self._arc = ARC(self.url, ARCConfig(api_key=token or None, deployment_id="microgrid-coordinator",
                                           sync_http_client=SyncHttpClient(default_timeout=self._seconds())))

    def _seconds(self) -> int:
        return max(1, math.ceil(self.timeout))

    # -- ARC -------------------------------------------------------------------
    def broadcast(self, tx: Tx) -> str:
        from bsv.transaction import Transaction

        txid = str(tx.hex_hash())
        r = self._arc.sync_broadcast(Transaction.from_hex(tx.to_hex()), timeout=self._seconds())
        if r.status == "success":
            status = str(r.message).split(" ", 1)[0]
            if r.txid != txid:
                raise ChainError(f"ARC at {self.url} answered txid {str(r.txid)[:80]!r} for {txid}")
            if status in REFUSED:
                raise ArcError(f"ARC refused {txid}: {r.message}", status)
            return txid
        more: dict[str, Any] = getattr(r, "more", None) or {}
        http = more.get("http_status")
        body = (more.get("arc_json") or {}).get("data")
        raise self._failure(f"broadcast {txid}", str(r.code), http, body, str(r.description))

    def status(self, txid: str) -> dict[str, Any] | None:
        """ARC's answer for `txid` (txStatus, blockHeight, merklePath..), or
        None when ARC does not know it (404)."""
        res = self._arc.check_transaction_status(txid, timeout=self._seconds())
        if res.get("status") == "failure":
            code = str(res.get("code"))
            if code == "404":
                return None
            raise self._failure(f"status of {txid}", code, None, res, str(res.get("detail")))
        if not res.get("txStatus") or not isinstance(res.get("txStatus"), str):
            raise ChainError(f"status of {txid}: ARC at {self.url} answered without a txStatus")
        return res

    def confirmations(self, txid: str) -> int:
        res = self.status(txid)
        if res is None:
            return -1
        status = str(res["txStatus"])
        if status in NOT_ON_CHAIN:
            return -1
        if status in IN_MEMPOOL:
            return 0
        if status not in MINED:
            raise ChainError(f"status of {txid}: ARC answered an unknown txStatus {status[:40]!r}")
        height = res.get("blockHeight")
        if not isinstance(height, int) or height <= 0:
            raise ChainError(f"status of {txid}: ARC says {status} without a block height")
        self._check_proof(txid, height, res.get("merklePath"))
        return max(1, self.lookup.tip().height - height + 1)

    def _check_proof(self, txid: str, height: int, bump: Any) -> None:
        """A MINED answer is believed when its merkle path leads from the
        txid to the root of the block at that height (from the lookup
        source, not from ARC)."""
        from bsv.merkle_path import MerklePath

        if not isinstance(bump, str) or not bump:
            raise ChainError(f"status of {txid}: ARC says mined at {height} without a merkle path")
        try:
            path = MerklePath.from_hex(bump)
            root = path.compute_root(txid)
        except Exception as e:  # bsv-sdk raises ValueError, IndexError, StopIteration.. on a bad path
            raise ChainError(f"status of {txid}: ARC's merkle path does not parse or lacks the tx ({type(e).__name__})") \
                from None
        if path.block_height != height:
            raise ChainError(f"status of {txid}: merkle path for block {path.block_height}, status says {height}")
        want = self.lookup.merkle_root(height)
        if root != want:
            raise ChainError(f"status of {txid}: merkle path leads to {root}, block {height}'s root is {want}")

    def _failure(self, what: str, code: str, http: Any, body: Any, description: str) -> ChainError:
        if code in ("401", "403"):
            return ArcError(f"{what}: ARC at {self.url} refused the API token (HTTP {code}); "
                            f"check channels.arc_token_file", code)
        if code == "408":
            return ArcError(f"{what}: ARC at {self.url} did not answer within {self.timeout:g} s", code)
        if code == "503":
            return ArcError(f"{what}: cannot reach ARC at {self.url}", code)
        if code == "ARC_TX_STATUS":
            return ArcError(f"{what}: ARC refused it: {description[:300]}", description.split(":", 1)[0])
        if isinstance(body, dict) and (body.get("title") or body.get("detail")):
            # ARC's RFC 7807 error body: status, title, detail, extraInfo.
            extra = body.get("extraInfo") or body.get("extra_info") or ""
            return ArcError(f"{what}: ARC refused it ({body.get('status', code)} {body.get('title', '')}): "
                            f"{str(body.get('detail', ''))[:200]} {str(extra)[:200]}".rstrip(), code)
        if http is not None and 200 <= int(http) < 300 or code == "ERR_UNKNOWN":
            return ArcError(f"{what}: ARC at {self.url} answered without the expected fields", code)
        return ArcError(f"{what}: ARC at {self.url} failed ({code}): {description[:200]}", code)

    # -- the lookup source -----------------------------------------------------
    def tip(self) -> ChainTip:
        return self.lookup.tip()

    def get_output(self, outpoint: Outpoint) -> TxOutput | None:
        return self.lookup.get_output(outpoint)
