"""SIGKILL either coordinator at random points while it streams payments.

Each round forks one side (payer or payee, alternating) as a child process
that resumes its channel node from disk and streams updates over a
socketpair with the other side, which runs in this process from disk too.
A timer thread SIGKILLs the child after a random delay (so the kill can
land anywhere: inside SQLite's commit, between store and ack, during
start-up). Afterwards:

- payee killed: its stored latest update is at least every update the
  payer saw acknowledged (and is exactly what the payer signed);
- payer killed: its stored latest signed update is at least every update
  the payee received (it never sent an update it had not stored).

After all rounds the channel still streams, closes, and the ledger accepts
the closing transaction paying the payee what it acknowledged.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import threading
from pathlib import Path

from bitcoinx import PrivateKey, bip32_key_from_string

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.channel import ChannelPolicy, State
from microgrid.coordinator.channels.protocol import ChannelNode
from microgrid.coordinator.channels.store import ChannelStore
from microgrid.coordinator.channels.wallet import Utxo, Wallet

from .conftest import FixedClock

ROUNDS = 200
CLOCK = FixedClock()


def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack(">I", len(data)) + data)


def recv_frame(sock: socket.socket) -> bytes | None:
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    n = struct.unpack(">I", head)[0]
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return body


def node(tmp: Path, name: str) -> ChannelNode:
    """A node resumed from the files in `tmp` (keys kept in clear: test only)."""
    keyfile = tmp / f"{name}.keys"
    if not keyfile.exists():
        keyfile.write_text(f"{Wallet.generate().root.to_extended_key_string()}\n{PrivateKey.from_random().to_hex()}")
    xprv, ident = keyfile.read_text().split()
    wallet = Wallet(bip32_key_from_string(xprv))
    return ChannelNode(PrivateKey.from_hex(ident), wallet, ChannelStore(tmp / f"{name}.db"),
                       LocalLedger(str(tmp / "ledger.db"), clock=CLOCK), CLOCK,
                       ChannelPolicy(min_lock_seconds=3_600, close_margin=600))


def child_payee(tmp: Path, sock: socket.socket) -> None:
    b = node(tmp, "payee")
    while True:
        req = recv_frame(sock)
        if req is None:
            os._exit(0)
        send_frame(sock, b.handle(req))


def child_payer(tmp: Path, sock: socket.socket, cid: bytes) -> None:
    a = node(tmp, "payer")
    while True:
        msg = a.pending_request(cid) or a.pay_request(cid, random.randint(1, 5))
        while msg is not None:
            send_frame(sock, msg.wire)
            reply = recv_frame(sock)
            if reply is None:
                os._exit(0)
            msg = a.on_reply(msg, reply)


def fork_child(target, *args) -> tuple[int, socket.socket]:
    parent_sock, child_sock = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            parent_sock.close()
            target(*args, child_sock)
        finally:
            os._exit(1)
    child_sock.close()
    return pid, parent_sock


def kill_later(pid: int, delay: float) -> threading.Timer:
    def kill() -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    t = threading.Timer(delay, kill)
    t.start()
    return t


def run_round(tmp: Path, cid: bytes, kill_payee: bool, delay: float) -> None:
    if kill_payee:
        a = node(tmp, "payer")
        pid, sock = fork_child(lambda s: child_payee(tmp, s))
        timer = kill_later(pid, delay)
        try:
            while True:
                msg = a.pending_request(cid) or a.pay_request(cid, random.randint(1, 5))
                send_frame(sock, msg.wire)
                reply = recv_frame(sock)
                if reply is None:
                    break
                a.on_reply(msg, reply)
        except (BrokenPipeError, ConnectionResetError):
            pass
        _, status = os.waitpid(pid, 0)
        timer.cancel()
        sock.close()
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        b = node(tmp, "payee")
        payer, payee = a.payer(cid), b.payee(cid)
        assert payee.seq >= payer.acked_seq, (payee.seq, payer.acked_seq)
        assert payee.seq <= (payer.sent.seq if payer.sent else 0)
        if payer.sent and payee.latest and payee.seq == payer.sent.seq:
            assert payee.latest == payer.sent
        a.store.close()
        b.store.close()
    else:
        b = node(tmp, "payee")
        pid, sock = fork_child(lambda s: child_payer(tmp, s, cid))
        timer = kill_later(pid, delay)
        try:
            while True:
                req = recv_frame(sock)
                if req is None:
                    break
                send_frame(sock, b.handle(req))
        except (BrokenPipeError, ConnectionResetError):
            pass
        _, status = os.waitpid(pid, 0)
        timer.cancel()
        sock.close()
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        a = node(tmp, "payer")
        payer, payee = a.payer(cid), b.payee(cid)
        assert payer.sent is not None or payee.latest is None
        if payee.latest is not None:
            assert payer.sent.seq >= payee.seq, (payer.sent.seq, payee.seq)
            if payer.sent.seq == payee.seq:
                assert payer.sent == payee.latest
        a.store.close()
        b.store.close()


def test_sigkill_either_side_never_loses_an_acknowledged_state(tmp_path: Path) -> None:
    rng = random.Random(4)
    a, b = node(tmp_path, "payer"), node(tmp_path, "payee")
    index, script = a.wallet.receive_script()
    a.wallet.add_utxo(Utxo(a.chain.faucet(script, 10_000_000), 10_000_000, index))  # type: ignore[attr-defined]
    msg = a.open_request("pipe", 5_000_000, 7_200, b.public_key)
    cid = msg.channel_id
    while msg is not None:
        msg = a.on_reply(msg, b.handle(msg.wire))
    assert b.payee(cid).state == State.OPEN
    a.store.close()
    b.store.close()

    kills = {True: 0, False: 0}
    for i in range(ROUNDS):
        kill_payee = bool(i % 2)
        run_round(tmp_path, cid, kill_payee, rng.uniform(0.0, 0.06))
        kills[kill_payee] += 1
    assert kills[True] == kills[False] == ROUNDS // 2

    # Afterwards the channel streams and closes correctly.
    a, b = node(tmp_path, "payer"), node(tmp_path, "payee")
    for _ in range(3):
        msg = a.pending_request(cid) or a.pay_request(cid, 7)
        while msg is not None:
            msg = a.on_reply(msg, b.handle(msg.wire))
    # Updates flowed in the rounds: how many depends on the machine's load
    # (a kill lands 0-60 ms into a round, start-up included), so only some.
    assert a.payer(cid).acked_seq == b.payee(cid).seq > 3
    received = b.payee(cid).received
    print("updates through the kills:", b.payee(cid).seq)
    msg = a.close_request(cid)
    while msg is not None:
        msg = a.on_reply(msg, b.handle(msg.wire))
    assert a.payer(cid).state == State.CLOSED
    closing = a.chain.transaction(a.payer(cid).closing_txid)  # type: ignore[attr-defined]
    assert closing.outputs[0].value == received == a.payer(cid).acked_amount
