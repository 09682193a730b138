"""Only neighbours open channels, and not too many: opens from keys off
the allow-list are refused before anything is stored or derived (200 from
random keys leave the database and the wallet as they were), and each cap
holds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.channels.admission import Admission
from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.channel import State
from microgrid.coordinator.channels.messages import decode, encode
from microgrid.coordinator.channels.protocol import ChannelNode
from microgrid.coordinator.channels.wallet import CHANNEL_CHAIN
from microgrid.coordinator.config import ConfigError, from_dict

from .conftest import FixedClock, make_node


def run(payer: ChannelNode, payee: ChannelNode, msg) -> None:
    while msg is not None:
        msg = payer.on_reply(msg, payee.handle(msg.wire))


def answer_code(payee: ChannelNode, msg) -> str | None:
    reply = decode(payee.handle(msg.wire))
    return reply.body["code"] if reply.type == "error" else None


def db_bytes(tmp_path: Path, name: str) -> int:
    return sum(p.stat().st_size for p in tmp_path.glob(f"{name}-channels.db*"))


def test_200_opens_from_random_keys_are_refused_cheaply(tmp_path: Path, ledger: LocalLedger) -> None:
    clock = FixedClock()
    ledger.clock = clock
    neighbour = make_node(tmp_path, "n", ledger, clock, funds=500_000)
    seller = make_node(tmp_path, "s", ledger, clock, admission=Admission(frozenset({neighbour.public_key})))
    wallet_file = tmp_path / "s-wallet.json"
    before = (db_bytes(tmp_path, "s"), wallet_file.read_bytes(), seller.wallet.next_index[CHANNEL_CHAIN])
    opens = []
    for _ in range(200):
        key = PrivateKey.from_random()
        opens.append(encode(key, "open", os.urandom(16), {
            "capacity": 100_000, "fee": 500, "refund_locktime": int(clock.t) + 7_200,
            "payer_key": key.public_key.to_bytes(compressed=True), "payer_script": bytes(25)}).wire)
    t0 = time.perf_counter()
    codes = [decode(seller.handle(w)).body.get("code") for w in opens]
    per_open_ms = (time.perf_counter() - t0) * 1000 / len(opens)
    assert codes == ["forbidden"] * 200
    assert (db_bytes(tmp_path, "s"), wallet_file.read_bytes(), seller.wallet.next_index[CHANNEL_CHAIN]) == before
    assert seller.channels == {} and list(seller.store.rows()) == []
    print(f"refused open: {per_open_ms:.2f} ms each")  # verify + sign; figures in the report
    assert per_open_ms < 50  # no storage, no key derivation: a few ms even on a loaded machine
    # The neighbour is let in.
    msg = neighbour.open_request("coap://s", 100_000, 7_200, seller.public_key)
    run(neighbour, seller, msg)
    assert seller.payee(msg.channel_id).state == State.OPEN


def test_caps_per_peer_pending_and_capacity(tmp_path: Path, ledger: LocalLedger) -> None:
    clock = FixedClock()
    ledger.clock = clock
    a = make_node(tmp_path, "a", ledger, clock, funds=2_000_000)
    c = make_node(tmp_path, "c", ledger, clock, funds=2_000_000)
    s = make_node(tmp_path, "s", ledger, clock, admission=Admission(
        frozenset({a.public_key, c.public_key}), max_open_per_peer=2, max_pending_per_peer=1, max_pending_total=2,
        max_capacity_sat=350_000))

    # Pending: a's first open is accepted and left unfunded (a crashed); its
    # next open replaces it, so stalled opens never pile up.
    stalled = a.open_request("coap://s", 100_000, 7_200, s.public_key)
    assert answer_code(s, stalled) is None
    again = a.open_request("coap://s", 100_000, 7_200, s.public_key)
    assert answer_code(s, again) is None
    assert stalled.channel_id not in s.channels and again.channel_id in s.channels
    assert [r["id"] for r in s.store.rows()] == [again.channel_id]
    # c's stalled open reaches the total of unfunded channels.
    c_stalled = c.open_request("coap://s", 50_000, 7_200, s.public_key)
    assert answer_code(s, c_stalled) is None
    third = make_node(tmp_path, "t", ledger, clock)
    s.admission = Admission(s.admission.allowed | {third.public_key}, 2, 1, 2, 350_000)
    assert answer_code(s, third.open_request("coap://s", 10_000, 7_200, s.public_key)) == "limit"

    # Open channels per peer: two from a are fine, the third passes the cap.
    s2 = make_node(tmp_path, "s2", ledger, clock, admission=Admission(frozenset({a.public_key}), 2, 1, 16, 350_000))
    for _ in range(2):
        m = a.open_request("coap://s2", 100_000, 7_200, s2.public_key)
        run(a, s2, m)
        assert s2.payee(m.channel_id).state == State.OPEN
    assert answer_code(s2, a.open_request("coap://s2", 100_000, 7_200, s2.public_key)) == "limit"
    # Capacity at risk: 200,000 open; 200,000 more would pass 350,000.
    s3 = make_node(tmp_path, "s3", ledger, clock, admission=Admission(frozenset({a.public_key}), 4, 1, 16, 350_000))
    m = a.open_request("coap://s3", 200_000, 7_200, s3.public_key)
    run(a, s3, m)
    refused = a.open_request("coap://s3", 200_000, 7_200, s3.public_key)
    reply = decode(s3.handle(refused.wire))
    assert reply.body["code"] == "limit" and "350" not in reply.body["detail"]
    m = a.open_request("coap://s3", 150_000, 7_200, s3.public_key)
    run(a, s3, m)  # 350,000 in all: within the cap
    assert s3.payee(m.channel_id).state == State.OPEN


@pytest.mark.parametrize("channels,match", [
    ({"allowed_peers": ["zz"]}, "allowed_peers\\[0\\]"),
    ({"allowed_peers": ["04" + "00" * 32]}, "compressed"),
    ({"max_pending_per_peer": 5, "max_open_per_peer": 4}, "max_pending_per_peer"),
    ({"max_capacity_sat": 10}, "max_capacity_sat"),
])
def test_admission_settings_are_validated(channels: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict({"channels": channels})
    ok = from_dict({"channels": {"allowed_peers": [PrivateKey.from_random().public_key.to_hex()]}})
    assert len(ok.channels.allowed_peers) == 1
