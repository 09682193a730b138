"""The ARC backend (channels/chain_arc.py) against a loopback ARC that
follows ARC's documented API (tests/channels/arc_server.py): what it sends,
and what it makes of every kind of answer."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Iterator

import pytest
from bitcoinx import PrivateKey, TxOutput

from microgrid.coordinator.channels.chain import ChainError, LocalLedger
from microgrid.coordinator.channels.chain_arc import ArcBackend
from microgrid.coordinator.channels.wallet import Wallet

from .arc_server import FakeArc, LedgerLookup
from .conftest import fund
from .test_chain_rpc import node  # noqa: F401 - the fake node fixture
from .test_lifecycle import world  # noqa: F401 - two nodes and a clock

TOKEN = "mainnet_5ecret7oken"


@pytest.fixture
def arc(ledger: LocalLedger) -> Iterator[FakeArc]:
    fake = FakeArc(ledger, token=TOKEN)
    yield fake
    fake.stop()


def backend(fake: FakeArc, token: str = TOKEN, timeout: float = 5.0) -> ArcBackend:
    return ArcBackend(fake.url, LedgerLookup(fake.ledger), token, timeout=timeout)


def payment(ledger: LocalLedger, w: Wallet | None = None):
    w = w or Wallet.generate()
    fund(w, ledger, 10_000)
    return w.build_payment([TxOutput(1_000, PrivateKey.from_random().public_key.P2PKH_script())])


def test_broadcast_posts_raw_hex_as_json_with_the_bearer_token(arc: FakeArc, ledger: LocalLedger) -> None:
    tx = payment(ledger)
    assert backend(arc).broadcast(tx) == tx.hex_hash()
    method, path, headers, body = arc.requests[-1]
    assert (method, path) == ("POST", "/v1/tx")
    assert headers["Content-Type"] == "application/json" and json.loads(body) == {"rawTx": tx.to_hex()}
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert ledger.confirmations(tx.hex_hash()) == 0


def test_confirmations_follow_the_status_and_a_checked_merkle_proof(arc: FakeArc, ledger: LocalLedger) -> None:
    b = backend(arc)
    tx = payment(ledger)
    assert b.confirmations(tx.hex_hash()) == -1  # 404: ARC does not know it
    b.broadcast(tx)
    assert b.confirmations(tx.hex_hash()) == 0  # SEEN_ON_NETWORK
    ledger.mine()
    assert b.confirmations(tx.hex_hash()) == 1  # MINED, proof leads to the block's root
    ledger.mine(2)
    assert b.confirmations(tx.hex_hash()) == 3
    method, path, headers, _ = arc.requests[-1]
    assert (method, path) == ("GET", f"/v1/tx/{tx.hex_hash()}") and headers["Authorization"] == f"Bearer {TOKEN}"
    assert b.tip() == ledger.tip()


def test_a_mined_status_whose_proof_does_not_lead_to_the_block_is_refused(arc: FakeArc, ledger: LocalLedger) -> None:
    b = backend(arc)
    tx = payment(ledger)
    b.broadcast(tx)
    ledger.mine()
    arc.mode = "bad-proof"
    with pytest.raises(ChainError, match="merkle path leads to"):
        b.confirmations(tx.hex_hash())


def test_a_broadcast_arc_already_knows_counts_as_done(arc: FakeArc, ledger: LocalLedger) -> None:
    b = backend(arc)
    tx = payment(ledger)
    assert b.broadcast(tx) == tx.hex_hash()
    assert b.broadcast(tx) == tx.hex_hash()  # 200, SEEN_ON_NETWORK
    ledger.mine()
    assert b.broadcast(tx) == tx.hex_hash()  # 200, MINED
    assert len(ledger.mempool()) == 0 and b.confirmations(tx.hex_hash()) == 1


def test_a_double_spend_is_refused_with_arcs_code(arc: FakeArc, ledger: LocalLedger) -> None:
    b = backend(arc)
    w = Wallet.generate()
    fund(w, ledger, 10_000)
    to = [TxOutput(1_000, PrivateKey.from_random().public_key.P2PKH_script())]
    first = w.build_payment(to)
    w.release(first)  # the same coin again, signed: a valid conflicting spend
    second = w.build_payment([TxOutput(2_000, to[0].script_pubkey)])
    assert second.inputs[0].prev_hash == first.inputs[0].prev_hash
    b.broadcast(first)
    with pytest.raises(ChainError, match="466 Conflicting tx found"):
        b.broadcast(second)
    assert b.confirmations(second.hex_hash()) == -1


def test_a_rejected_status_is_a_refusal(arc: FakeArc, ledger: LocalLedger) -> None:
    b = backend(arc)
    tx = payment(ledger)
    tx.locktime = ledger.tip().height + 50  # not final yet; the ledger says so, ARC answers REJECTED
    for txin in tx.inputs:
        txin.sequence = 0
    with pytest.raises(ChainError, match="REJECTED: 64: non-final"):
        b.broadcast(tx)


def test_a_refused_token_is_a_clear_error_without_the_token(arc: FakeArc, ledger: LocalLedger) -> None:
    wrong = "mainnet_n0tTheR1ght0ne"
    tx = payment(ledger)
    for call in (lambda: backend(arc, wrong).broadcast(tx), lambda: backend(arc, "").confirmations(tx.hex_hash())):
        with pytest.raises(ChainError) as e:
            call()
        text = f"{e.value} {e.value!r}"
        assert "refused the API token (HTTP 401)" in text
        assert wrong not in text and TOKEN not in text
    assert ledger.confirmations(tx.hex_hash()) == -1


def test_credentials_written_into_the_url_are_not_kept(arc: FakeArc, ledger: LocalLedger) -> None:
    b = ArcBackend(arc.url.replace("http://", "http://user:hunter2@"), LedgerLookup(ledger), TOKEN)
    assert "hunter2" not in b.url
    arc.mode = "malformed"
    with pytest.raises(ChainError) as e:
        b.broadcast(payment(ledger))
    assert "hunter2" not in str(e.value)


def test_a_malformed_answer_is_an_error_not_a_success(arc: FakeArc, ledger: LocalLedger) -> None:
    b = backend(arc)
    tx = payment(ledger)
    arc.mode = "malformed"
    with pytest.raises(ChainError, match="without the expected fields"):
        b.broadcast(tx)
    with pytest.raises(ChainError, match="without a txStatus"):
        b.confirmations(tx.hex_hash())
    arc.mode = "no-status"
    with pytest.raises(ChainError, match="without a txStatus"):
        b.confirmations(tx.hex_hash())
    with pytest.raises(ChainError):
        b.broadcast(tx)  # a 200 whose txid is not ours


def test_a_timeout_is_an_error_within_the_bound(arc: FakeArc, ledger: LocalLedger) -> None:
    b = backend(arc, timeout=1.0)
    tx = payment(ledger)
    arc.mode, arc.delay_s = "slow", 3.0
    t0 = time.monotonic()
    with pytest.raises(ChainError, match="did not answer within 1 s"):
        b.broadcast(tx)
    with pytest.raises(ChainError, match="did not answer within 1 s"):
        b.confirmations(tx.hex_hash())
    assert time.monotonic() - t0 < 5.0


def test_an_unreachable_arc_is_an_error(ledger: LocalLedger) -> None:
    fake = FakeArc(ledger)
    fake.stop()
    with pytest.raises(ChainError, match="cannot reach ARC"):
        backend(fake, "").broadcast(payment(ledger))


# -- configuration: chain = "arc:URL" beside a node for lookups -----------------------------------------------

def arc_config(tmp_path, arc_url: str, **channels: str):
    from microgrid.coordinator.config import from_dict

    return from_dict({"store": {"path": str(tmp_path / "c.db")},
                      "channels": {"chain": f"arc:{arc_url}", **channels}})


def test_arc_settings_are_validated_and_never_echo_a_secret(tmp_path) -> None:
    from microgrid.coordinator.config import ConfigError

    with pytest.raises(ConfigError, match="chain_lookup"):
        arc_config(tmp_path, "https://arc.example.com")
    with pytest.raises(ConfigError) as e:
        arc_config(tmp_path, f"https://x:{TOKEN}@arc.example.com", chain_lookup="rpc:http://127.0.0.1:8332")
    assert "arc_token_file" in str(e.value) and TOKEN not in str(e.value)
    with pytest.raises(ConfigError) as e:
        arc_config(tmp_path, "https://arc.example.com", chain_lookup=f"rpc:http://u:{TOKEN}@127.0.0.1:8332")
    assert "rpc_password_file" in str(e.value) and TOKEN not in str(e.value)
    with pytest.raises(ConfigError, match="arc_token_file is for"):
        from microgrid.coordinator.config import from_dict

        from_dict({"store": {"path": str(tmp_path / "c.db")},
                   "channels": {"chain": "rpc:http://127.0.0.1:8332", "arc_token_file": "t"}})
    cfg = arc_config(tmp_path, "https://arc.example.com/", chain_lookup="rpc:http://127.0.0.1:8332",
                     arc_token_file="arc.token", chain_timeout_s=3)
    assert cfg.channels.chain_timeout_s == 3


def test_open_chain_builds_arc_with_the_token_from_its_file(tmp_path, arc: FakeArc, ledger: LocalLedger) -> None:
    from microgrid.coordinator.app import open_chain
    from microgrid.coordinator.channels.chain_rpc import NodeRpcBackend
    from microgrid.coordinator.config import ConfigError

    from .conftest import FixedClock

    cfg = arc_config(tmp_path, arc.url, chain_lookup="rpc:http://127.0.0.1:1/", arc_token_file="arc.token",
                     chain_timeout_s=2)
    with pytest.raises(ConfigError) as e:
        open_chain(cfg, FixedClock())  # no token file yet
    assert "arc_token_file" in str(e.value)
    (tmp_path / "arc.token").write_text(TOKEN + "\n")
    chain = open_chain(cfg, FixedClock())
    assert isinstance(chain, ArcBackend) and isinstance(chain.lookup, NodeRpcBackend)
    assert chain.lookup.timeout == 2 and chain.timeout == 2
    tx = payment(ledger)
    assert chain.broadcast(tx) == tx.hex_hash()  # the token from the file was accepted
    assert arc.requests[-1][2]["Authorization"] == f"Bearer {TOKEN}"


def test_the_node_gives_a_block_merkle_root(node) -> None:  # noqa: F811
    from microgrid.coordinator.channels.chain_rpc import NodeRpcBackend

    fake, url = node
    root = "ab" * 32
    fake.answers["getblockhash"] = (200, {"result": "cd" * 32, "error": None, "id": 1})
    fake.answers["getblockheader"] = (200, {"result": {"merkleroot": root, "height": 7}, "error": None, "id": 2})
    assert NodeRpcBackend(url).merkle_root(7) == root
    assert [r["method"] for r in fake.requests[-2:]] == ["getblockhash", "getblockheader"]
    assert fake.requests[-2]["params"] == [7] and fake.requests[-1]["params"] == ["cd" * 32, True]
    fake.answers["getblockheader"] = (200, {"result": {"height": 7}, "error": None, "id": 2})
    with pytest.raises(ChainError, match="unexpected answer"):
        NodeRpcBackend(url).merkle_root(7)


# -- channels on ARC: funding watched, lost, back; close broadcast and confirmed ------------------------------

def test_channels_run_their_lifecycle_on_arc(world, arc: FakeArc, ledger: LocalLedger) -> None:
    from dataclasses import replace

    from microgrid.coordinator.channels.lifecycle import ChannelLifecycle
    from microgrid.coordinator.channels.protocol import txid_hex_of

    from .test_lifecycle import open_and_pay, tick

    a, b, clock, net, settings = world
    a.chain = b.chain = backend(arc)
    settings = replace(settings, confirmations=2)
    cid = open_and_pay(a, b, net, [500])  # funding broadcast through ARC, checked through the lookup
    funding = txid_hex_of(b.payee(cid).funding)
    assert ("POST", "/v1/tx") in [(m, p) for m, p, _, _ in arc.requests]
    seller = ChannelLifecycle(b, net.exchange_for(b), settings)
    buyer = ChannelLifecycle(a, net.exchange_for(a), settings)
    assert tick(seller)[0].funding_lost == [] and not b.payee(cid).funding_confirmed  # SEEN_ON_NETWORK
    ledger.evict(funding)  # the network lost it: ARC answers 404
    assert tick(seller)[0].funding_lost == [cid]
    with pytest.raises(Exception, match="funding"):
        asyncio.run(net.exchange_for(a)("coap://b", a.pay_request(cid, 500)))
    assert tick(buyer)[0].funded == [cid]  # the buyer puts it back through ARC
    assert tick(seller)[0].funding_lost == [] and ledger.confirmations(funding) == 0
    asyncio.run(net.exchange_for(a)("coap://b", a.pending_request(cid)))
    assert b.payee(cid).received == 1_000
    ledger.mine()
    tick(seller)
    assert not b.payee(cid).funding_confirmed  # 1 of 2
    ledger.mine()
    tick(seller)
    assert b.payee(cid).funding_confirmed  # MINED, 2 deep, proof checked
    # Due: the seller closes through ARC; a tick while it waits in the mempool does not resend it.
    clock.t = a.payer(cid).terms.refund_locktime - 600
    assert tick(seller)[0].closed == [cid]
    closing = b.payee(cid).closing_tx.hex_hash()
    posts = sum(1 for m, _, _, _ in arc.requests if m == "POST")
    assert tick(seller)[0].closed == [] and sum(1 for m, _, _, _ in arc.requests if m == "POST") == posts
    ledger.mine(2)
    tick(seller)
    assert cid in seller._confirmed and ledger.confirmations(closing) == 2
    assert b.wallet.balance() == 1_000


@pytest.mark.parametrize("status,shown,refused", [
    ("DOUBLE_SPEND_ATTEMPTED", -1, True),  # contested: not counted on, as a vanished funding
    ("REJECTED", -1, True),
    ("SEEN_IN_ORPHAN_MEMPOOL", 0, False),
    ("MINED_IN_STALE_BLOCK", 0, False),  # back to the mempool, mined again later
    ("STORED", 0, False),  # ARC holds it and relays it itself
    ("SOMETHING_NEW", None, False),
])
def test_each_arc_status_means_what_the_channels_need(arc: FakeArc, ledger: LocalLedger, status: str, shown,
                                                     refused: bool) -> None:
    b = backend(arc)
    tx = payment(ledger)
    arc.mode = f"status:{status}"
    if shown is None:
        with pytest.raises(ChainError, match="unknown txStatus"):
            b.confirmations(tx.hex_hash())
    else:
        assert b.confirmations(tx.hex_hash()) == shown
    if refused:
        with pytest.raises(ChainError, match=status):
            b.broadcast(tx)
    else:
        assert b.broadcast(tx) == tx.hex_hash()
