"""A hostile neighbour for a coordinator on 127.0.0.1, for the hardening
test and bench/bench_hostile.py.

`python -m microgrid.hostile --port P ...` runs, in its own process (so the
honest meters' latencies are measured in another):

- fuzzed datagrams: mutations of CoAP requests (bit flips, truncations,
  random options, a non-UTF-8 Uri-Path, requests for the API without
  credentials, absurd Block1 numbers, random bytes), from `--sources`
  addresses 127.0.0.2, 127.0.0.3, ... (all loopback: Linux routes
  127.0.0.0/8 to `lo`), paced at `--rate` datagrams a second;
- idle TCP connections (`--idle`), held open, if the coordinator listens
  on TCP;
- stalled block-wise uploads (`--uploads`): each source posts the first
  1 KiB block of a 400 KiB upload (Size1 announces it), then tries the
  second, then stalls with a fresh first block held;

then prints one JSON line of what it saw, and holds its connections and
uploads until its stdin closes. It runs at nice 10 (`--nice`): on a LAN an
attacker has its own CPU, here it shares the coordinator's. `honest_meter` is the other side: a meter
posting signed readings one at a time through aiocoap, timing each answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import socket
import struct
import sys
import time
from typing import Any, Callable

from microgrid.edge import coap
from microgrid.shared import cose, reading

OPT_BLOCK1 = 27
OPT_SIZE1 = 60
OPT_URI_QUERY = 15
UPLOAD_BYTES = 400 * 1024


def source_address(i: int) -> str:
    """The i-th attacker address: 127.0.0.2 upwards, never 127.0.0.1 (the
    honest meters' address)."""
    return f"127.0.{(i + 2) // 254}.{(i + 2) % 254 or 254}"


def _block1(num: int, more: bool, szx: int = 6) -> bytes:
    value = (num << 4) | (8 if more else 0) | szx
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


class Fuzzer:
    """Deterministic fuzzed datagrams (seeded)."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        key = bytes(range(7, 39))
        from microgrid.shared import secp256k1

        pub = secp256k1.public_key(key)
        # A genuine-looking reading from a key nobody registered.
        self.reading = reading.build(key, pub, 1, 1_700_000_000, 1, 0, 1, 230.0)
        self.valid = coap.encode(coap.CON, coap.POST, 1, b"\x01\x02",
                                 [(coap.OPT_URI_PATH, b"readings"), (coap.OPT_CONTENT_FORMAT, b"\x12")], self.reading)
        self.mid = 0

    def _header(self, code: int, token: bytes = b"") -> tuple[int, int, int, bytes]:
        self.mid = (self.mid + 1) & 0xFFFF
        return self.rng.choice((coap.CON, coap.NON)), code, self.mid, token

    def datagram(self) -> bytes:
        rng = self.rng
        kind = rng.randrange(9)
        if kind == 0:  # bit flips in a valid request
            data = bytearray(self.valid)
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
            return bytes(data)
        if kind == 1:  # truncated
            return self.valid[:rng.randrange(len(self.valid))]
        if kind == 2:  # non-UTF-8 Uri-Path (11 bytes)
            t, _, m, _ = self._header(1)
            return bytes([0x40 | (t << 4), 1]) + struct.pack(">H", m) + b"\xb4\xff\xfe\xfd\xfc\x00\x00"
        if kind == 3:  # the API without credentials
            path = rng.choice([[b"api", b"meters"], [b"api", b"channels"], [b"devices"], [b"health"]])
            opts = [(coap.OPT_URI_PATH, p) for p in path]
            if path == [b"devices"]:
                opts.append((OPT_URI_QUERY, b"id=d136e9438ef1b044"))
            return coap.encode(*self._header(1, rng.randbytes(rng.randrange(9))), opts, b"")
        if kind == 4:  # absurd Block1 numbers and Size1
            opts = [(coap.OPT_URI_PATH, b"readings"), (OPT_BLOCK1, _block1(rng.randrange(1 << 20), True)),
                    (OPT_SIZE1, struct.pack(">I", rng.randrange(1 << 32)))]
            return coap.encode(*self._header(coap.POST), opts, rng.randbytes(1024))
        if kind == 5:  # random options of random numbers and lengths
            opts = sorted((rng.randrange(1, 2000), rng.randbytes(rng.randrange(0, 300))) for _ in range(rng.randint(1, 6)))
            return coap.encode(*self._header(rng.randrange(256)), opts, rng.randbytes(rng.randrange(64)))
        if kind == 6:  # valid header, random payload to /readings
            return coap.encode(*self._header(coap.POST), [(coap.OPT_URI_PATH, b"readings")],
                               rng.randbytes(rng.randrange(1, 1100)))
        if kind == 7:  # random path segments, some not UTF-8
            opts = [(coap.OPT_URI_PATH, rng.randbytes(rng.randrange(1, 12))) for _ in range(rng.randint(1, 4))]
            return coap.encode(*self._header(rng.choice((1, 2, 3, 4))), opts, b"")
        return rng.randbytes(rng.randrange(0, 1300))  # anything at all


async def fuzz(port: int, count: int, sources: int, rate: float, seed: int) -> int:
    socks = []
    for i in range(sources):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source_address(i), 0))
        s.setblocking(False)
        socks.append(s)
    fuzzer = Fuzzer(seed)
    sent = 0
    chunk = max(1, int(rate / 100))
    start = time.monotonic()
    try:
        while sent < count:
            for _ in range(min(chunk, count - sent)):
                s = socks[sent % len(socks)]
                try:
                    s.sendto(fuzzer.datagram(), ("127.0.0.1", port))
                except OSError:
                    pass  # a full send buffer: the datagram is lost, as on a LAN
                sent += 1
                # Drain what the coordinator answered, so our buffers never fill.
                try:
                    while True:
                        s.recv(2048)
                except OSError:
                    pass
            ahead = start + sent / rate - time.monotonic()
            if ahead < -0.1:  # fell behind (a busy machine): go on at the pace, no catch-up burst
                start -= ahead
                ahead = 0.0
            await asyncio.sleep(max(0.0, ahead))
    finally:
        for s in socks:
            s.close()
    return sent


async def idle_connections(port: int, count: int) -> tuple[list[socket.socket], int]:
    """Open `count` TCP connections and hold them; how many the server
    closed at once (over its cap)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, count + 512)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    loop = asyncio.get_running_loop()
    held: list[socket.socket] = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        try:
            await loop.sock_connect(s, ("127.0.0.1", port))
        except OSError:
            s.close()
            break
        held.append(s)
    await asyncio.sleep(1.0)
    closed = 0
    for s in held:
        try:
            closed += s.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return held, closed


async def stalled_uploads(port: int, count: int, first_source: int) -> tuple[list[socket.socket], dict[str, int]]:
    """Each source: block 0 of a 400 KiB upload, block 1, then a fresh block
    0 held. Counts of the answers to block 1 (4.13 expected)."""
    loop = asyncio.get_running_loop()
    seen = {"continue": 0, "too_large": 0, "other": 0, "none": 0}
    socks: list[socket.socket] = []
    rng = random.Random(7)

    async def one(i: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source_address(first_source + i // 4), 0))
        s.setblocking(False)
        s.connect(("127.0.0.1", port))
        socks.append(s)
        size1 = struct.pack(">I", UPLOAD_BYTES)
        for num in (0, 1):
            mid = rng.randrange(65536)
            token = rng.randbytes(4)
            path = b"readings" if i % 2 == 0 else b"devices"
            opts = [(coap.OPT_URI_PATH, path), (OPT_BLOCK1, _block1(num, True))]
            if num == 0:
                opts.append((OPT_SIZE1, size1))
            await loop.sock_sendall(s, coap.encode(coap.CON, coap.POST, mid, token, opts, rng.randbytes(1024)))
            try:
                got = coap.decode(await asyncio.wait_for(loop.sock_recv(s, 2048), 5))
            except asyncio.TimeoutError:
                seen["none"] += 1
                continue
            code = got[1] if got else 0
            key = "continue" if code == 95 else "too_large" if code == 141 else "other"
            if num == 1 or key != "continue":
                seen[key] += 1
        # Stall: a first block without Size1, then nothing more.
        opts = [(coap.OPT_URI_PATH, b"readings"), (OPT_BLOCK1, _block1(0, True))]
        await loop.sock_sendall(s, coap.encode(coap.CON, coap.POST, rng.randrange(65536), rng.randbytes(4),
                                               opts, rng.randbytes(1024)))

    await asyncio.gather(*(one(i) for i in range(count)))
    return socks, seen


async def attack(args: argparse.Namespace) -> dict[str, Any]:
    held: list[socket.socket] = []
    out: dict[str, Any] = {}
    if args.uploads:
        socks, seen = await stalled_uploads(args.port, args.uploads, args.sources)
        held += socks
        out["uploads"] = seen
    idle_task = asyncio.ensure_future(idle_connections(args.tcp_port, args.idle)) if args.idle else None
    out["fuzzed"] = await fuzz(args.port, args.datagrams, args.sources, args.rate, args.seed)
    if idle_task is not None:
        conns, closed = await idle_task
        held += conns
        out["idle_opened"] = len(conns)
        out["idle_closed_by_server"] = closed
    out["held"] = len(held)
    print(json.dumps(out), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # hold until told
    for s in held:
        s.close()
    return out


async def honest_meter(port: int, sender: Any, count: int, interval_s: float, client: Any,
                       until: Callable[[], bool] | None = None, most: int = 1000) -> list[tuple[float, int]]:
    """Post `count` readings of `sender` (loadgen.SimulatedSender) through
    aiocoap, one at a time, and then more until `until()` (at most `most`):
    (seconds to the answer, response code) each; code 0 for no answer
    within 30 s."""
    import aiocoap
    from aiocoap.numbers.codes import Code

    out: list[tuple[float, int]] = []
    while len(out) < most and (len(out) < count or (until is not None and not until())):
        req = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/readings", payload=sender.next_message())
        req.opt.content_format = 18
        t0 = time.monotonic()
        try:
            resp = await asyncio.wait_for(client.request(req).response, 30)
            out.append((time.monotonic() - t0, int(resp.code)))
        except (asyncio.TimeoutError, aiocoap.error.Error):
            out.append((time.monotonic() - t0, 0))
        await asyncio.sleep(interval_s)
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds used by process `pid` so far."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tcp-port", type=int, default=0, help="TCP port (default: --port)")
    p.add_argument("--datagrams", type=int, default=100_000)
    p.add_argument("--sources", type=int, default=64)
    p.add_argument("--rate", type=float, default=5000.0, help="datagrams per second")
    p.add_argument("--idle", type=int, default=0, help="idle TCP connections to hold")
    p.add_argument("--uploads", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nice", type=int, default=10, help="niceness of the attacking process (0: as the others)")
    args = p.parse_args()
    args.tcp_port = args.tcp_port or args.port
    # On a LAN the attacker has its own CPU; on this one machine it must not
    # take the coordinator's (measured against) away: it runs niced.
    import os

    os.nice(args.nice)
    asyncio.run(attack(args))


if __name__ == "__main__":
    main()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure(workdir: Any, datagrams: int, uploads: int, idle: int, meters: int = 4, readings_each: int = 10,
            interval_s: float = 0.2, rate: float = 5000.0, sources: int = 32, max_tcp: int = 256) -> dict[str, Any]:
    """A coordinator process on 127.0.0.1 with UDP and TCP, honest meters
    first alone (the baseline), then during the attack above. Figures:
    honest latencies and codes, the coordinator's RSS, its log's growth."""
    import hashlib
    import random as _random
    import subprocess
    import threading
    from pathlib import Path

    import aiocoap

    from microgrid.coordinator.store.database import open_database
    from microgrid.coordinator.store.readings import ReadingStore
    from microgrid.loadgen import SimulatedSender
    from microgrid.processes import CoordinatorProcess, free_udp_port

    workdir = Path(workdir)
    db = workdir / "hostile.db"
    rng = _random.Random(5)
    senders = [SimulatedSender(rng) for _ in range(meters)]
    store_db = open_database(db)
    store = ReadingStore(store_db)
    for n, s in enumerate(senders):
        store.register_device(s.public_key, f"honest-{n}")
    store_db.close()
    config = workdir / "hostile.toml"
    token_hash = hashlib.sha256(b"bench-token").hexdigest()
    config.write_text(f'[coap]\ntransports = ["udp", "tcp"]\nmax_tcp_connections = {max_tcp}\n'
                      f'[ingest]\nrate_exempt = []\n[api]\ntoken_sha256 = ["{token_hash}"]\n')
    port = free_udp_port()
    proc = CoordinatorProcess(db, port, config).start()
    assert proc.proc is not None
    pid = proc.proc.pid
    out: dict[str, Any] = {}

    async def honest(count: int, until: Callable[[], bool] | None = None) -> list[tuple[float, int]]:
        client = await aiocoap.Context.create_client_context()
        try:
            runs = await asyncio.gather(*(honest_meter(port, s, count, interval_s, client, until) for s in senders))
        finally:
            await client.shutdown()
        return [x for run in runs for x in run]

    try:
        c0, t0 = cpu_s(pid), time.monotonic()
        out["baseline"] = asyncio.run(honest(readings_each))
        out["baseline_cpu_share"] = (cpu_s(pid) - c0) / (time.monotonic() - t0)
        out["rss_before_kb"] = rss_kb(pid)
        log_before = proc.log_path.stat().st_size
        attacker = subprocess.Popen(
            [sys.executable, "-m", "microgrid.hostile", "--port", str(port), "--datagrams", str(datagrams),
             "--sources", str(sources), "--rate", str(rate), "--idle", str(idle), "--uploads", str(uploads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(rss_kb(pid))
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        c0, t0 = cpu_s(pid), time.monotonic()
        assert attacker.stdout is not None and attacker.stdin is not None
        report: list[str] = []
        done = threading.Event()

        def read_report() -> None:
            assert attacker.stdout is not None
            report.append(attacker.stdout.readline())
            done.set()

        threading.Thread(target=read_report, daemon=True).start()
        # Honest meters all through the attack: until the attacker reports
        # it has sent everything (and at least readings_each each).
        out["attacked"] = asyncio.run(honest(readings_each, done.is_set))
        done.wait(120)
        out["attack_s"] = time.monotonic() - t0
        out["attack_cpu_share"] = (cpu_s(pid) - c0) / out["attack_s"]
        out["load_average"] = open("/proc/loadavg").read().split()[0]
        line = report[0] if report else ""
        out["attack"] = json.loads(line) if line.strip() else {"error": attacker.stderr.read() if attacker.stderr else ""}
        # One more round while the idle connections and stalled uploads are held.
        out["held"] = asyncio.run(honest(3))
        attacker.stdin.close()
        attacker.wait(30)
        stop.set()
        sampler.join(5)
        time.sleep(0.5)
        out["rss_max_kb"] = max(samples + [rss_kb(pid)])
        out["rss_after_kb"] = rss_kb(pid)
        out["log_growth_bytes"] = proc.log_path.stat().st_size - log_before
        log_text = proc.log_path.read_text(errors="replace")
        out["tracebacks"] = log_text.count("Traceback")
        out["alive"] = proc.proc.poll() is None
        out["health"] = asyncio.run(_health(port))
        out["log_tail"] = log_text.splitlines()[-15:]
    finally:
        proc.stop()
    st = ReadingStore(open_database(db))
    out["stored"] = st.count()
    st.db.close()
    out["honest_sent"] = len(out["baseline"]) + len(out["attacked"]) + len(out["held"])
    return out


async def _health(port: int) -> dict[str, Any]:
    import aiocoap
    from aiocoap.numbers.codes import Code
    from aiocoap.optiontypes import OpaqueOption

    from microgrid.coordinator.ingest.access import TOKEN_OPTION

    client = await aiocoap.Context.create_client_context()
    try:
        req = aiocoap.Message(code=Code.GET, uri=f"coap://127.0.0.1:{port}/health")
        req.opt.add_option(OpaqueOption(TOKEN_OPTION, b"bench-token"))
        resp = await asyncio.wait_for(client.request(req).response, 10)
        return dict(json.loads(resp.payload))
    finally:
        await client.shutdown()
