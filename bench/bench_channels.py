"""Payment-channel updates per second, against raw bitcoinx sign+verify
measured in the same run.

    python bench/bench_channels.py [--updates 1000] [--seconds 10]

Figures (each bounded by --seconds, at most --updates updates):
- baseline: one secp256k1 signature made and checked with bitcoinx
  (`PrivateKey.sign` + `PublicKey.verify_der_signature`, hasher=None);
- core: the payer builds and signs an update, the payee checks it (sighash,
  signature, amounts) and countersigns + runs the interpreter (full check);
- core + store: the same with the payee's update committed to SQLite
  (WAL, synchronous=FULL) before the ack;
- round trip: two channel nodes in one process over CoAP on 127.0.0.1:
  build, sign, send, verify, persist, ack, with per-update latency
  p50 / p99.
- rollover: what moving a stream to a new channel costs, over the same
  CoAP loopback: open (terms, refund signature, funding broadcast to the
  local ledger, funded) and the first update on it, p50 / max of a few.
Each rate is printed with its ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiocoap
from bitcoinx import PrivateKey

from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.channels.channel import ChannelPolicy
from microgrid.coordinator.channels.protocol import ChannelNode
from microgrid.coordinator.channels.store import ChannelStore
from microgrid.coordinator.channels.transport import ChannelClient, channel_uri, serve
from microgrid.coordinator.channels.wallet import Utxo, Wallet
from microgrid.processes import free_udp_port

T0 = 1_700_000_000


class Clock:
    def now(self) -> float:
        return T0


def timed(n: int, seconds: float, step) -> tuple[int, float, list[float]]:
    """Run step() up to n times or for `seconds`; (count, elapsed, latencies)."""
    lat = []
    start = time.perf_counter()
    deadline = start + seconds
    for _ in range(n):
        t = time.perf_counter()
        step()
        lat.append(time.perf_counter() - t)
        if t > deadline:
            break
    return len(lat), time.perf_counter() - start, lat


def baseline(n: int, seconds: float) -> float:
    key = PrivateKey.from_random()
    pub = key.public_key
    msg = os.urandom(32)

    def step() -> None:
        sig = key.sign(msg, hasher=None)
        assert pub.verify_der_signature(sig, msg, hasher=None)

    count, elapsed, _ = timed(n * 5, seconds, step)
    return count / elapsed


def make_node(tmp: Path, name: str, ledger: LocalLedger, funds: int = 0, **kw) -> ChannelNode:
    wallet = Wallet.generate(fee_rate=100)
    if funds:
        index, script = wallet.receive_script()
        wallet.add_utxo(Utxo(ledger.faucet(script, funds), funds, index))
    store = ChannelStore(tmp / f"{name}.db")
    return ChannelNode(PrivateKey.from_random(), wallet, store, ledger, Clock(),
                       ChannelPolicy(min_lock_seconds=3_600, close_margin=600), **kw)


def open_in_process(a: ChannelNode, b: ChannelNode, capacity: int) -> bytes:
    msg = a.open_request("coap://b", capacity, 7_200, b.public_key)
    cid = msg.channel_id
    while msg is not None:
        msg = a.on_reply(msg, b.handle(msg.wire))
    return cid


def core(n: int, seconds: float, tmp: Path, persist: bool) -> float:
    ledger = LocalLedger()
    a = make_node(tmp, f"core-a-{persist}", ledger, funds=10_000_000)
    b = make_node(tmp, f"core-b-{persist}", ledger)
    cid = open_in_process(a, b, 5_000_000)
    payer, payee = a.payer(cid), b.payee(cid)
    entry = b.channels[cid]

    def step() -> None:
        u = payer.pay(1, T0)
        payee.check_update(u, T0)
        payee.complete_update(u)
        payee.latest = u
        if persist:
            b.store.save_channel("payee", payee, entry.peer, entry.peer_uri, entry.key_index, u, acked=True)
        payer.on_ack(u.seq, u.amount)

    count, elapsed, _ = timed(n, seconds, step)
    return count / elapsed


def round_trip(n: int, seconds: float, tmp: Path, rollovers: int = 5) -> tuple[float, float, float, list[float]]:
    ledger = LocalLedger()
    pa, pb = free_udp_port(), free_udp_port()
    a = make_node(tmp, "rt-a", ledger, funds=10_000_000, uri=channel_uri("127.0.0.1", pa))
    b = make_node(tmp, "rt-b", ledger, uri=channel_uri("127.0.0.1", pb))

    async def go() -> tuple[float, float, float, list[float]]:
        sa = await serve(a, "127.0.0.1", pa)
        sb = await serve(b, "127.0.0.1", pb)
        client = ChannelClient(a, await aiocoap.Context.create_client_context())
        try:
            cid = await client.open_channel(b.uri, 5_000_000, 7_200, b.public_key)
            lat = []
            start = time.perf_counter()
            for _ in range(n):
                t = time.perf_counter()
                await client.pay(cid, 1)
                lat.append(time.perf_counter() - t)
                if t - start > seconds:
                    break
            elapsed = time.perf_counter() - start
            lat.sort()
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            roll = []
            for _ in range(rollovers):
                t = time.perf_counter()
                nxt = await client.open_channel(b.uri, 500_000, 7_200, b.public_key)
                await client.pay(nxt, 1)
                roll.append(time.perf_counter() - t)
            return len(lat) / elapsed, statistics.median(lat), p99, sorted(roll)
        finally:
            for ctx in (client.context, sa, sb):
                await ctx.shutdown()

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=1_000)
    ap.add_argument("--seconds", type=float, default=10.0, help="bound per figure")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base = baseline(args.updates, args.seconds)
        c = core(args.updates, args.seconds, tmp, persist=False)
        cs = core(args.updates, args.seconds, tmp, persist=True)
        rt, p50, p99, roll = round_trip(args.updates, args.seconds, tmp)
    print(f"channel benchmark: up to {args.updates} updates, {args.seconds:.0f} s bound per figure, "
          f"{os.cpu_count()} cores")
    print(f"  bitcoinx sign+verify (baseline)        {base:8.0f} /s")
    print(f"  update: sign, verify, interpreter      {c:8.0f} /s   ratio {c / base:5.3f}")
    print(f"  update: ... + SQLite FULL commit       {cs:8.0f} /s   ratio {cs / base:5.3f}")
    print(f"  update: round trip over CoAP loopback  {rt:8.0f} /s   ratio {rt / base:5.3f}   "
          f"latency p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
    print(f"  rollover: open next channel + 1st update over CoAP loopback   "
          f"p50 {statistics.median(roll) * 1e3:.1f} ms, max {roll[-1] * 1e3:.1f} ms ({len(roll)} opens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
