"""The overlay on OpenDHT (PyPI `opendht` 4.x). The only module that
imports opendht.

Debian's python3-opendht 2.4 lacks registerType, setRateLimit,
setPeerDiscovery and the put/get callback signatures used here: 4.x is
required.

Traps of the Python binding (4.4.2), each avoided here and tested in
tests/overlay/test_engine_traps.py:
- run() without addresses binds every interface (0.0.0.0 and ::): we always
  pass bind4/bind6 explicitly (127.0.0.1 and ::1 in tests).
- run()'s default `config=DhtConfig()` is one object shared by every call
  (and run(id=...) mutates it): we build a fresh DhtConfig per run().
- registerType() before run() segfaults; after run() it is fine.
- A listen on an IPv4-only node never stops: returning False from its
  callback is ignored and cancelListen() does not stop it either (it has
  also been seen to segfault). We bind both families and stop listens by
  returning False from the callback; cancelListen is never called.
- join() before the shutdown callback fired can hang for good: stop() waits
  for the callback (bounded) and joins only after it. Until joined, a runner
  keeps its thread and its sockets (the port stays bound): one not confirmed
  in time is parked, and the next start() in this process joins it once
  confirmed, waiting for it when it holds the port wanted (join_parked;
  tests/overlay/test_engine_restart.py).
- Blocking get()/put() have no timeout (about 9 s when the only known node
  is dead, unbounded otherwise): we use the callback forms and our own
  timeouts.
- A value's lifetime follows the ValueType registered on the *storing*
  nodes; an unknown type gets the default 10 minutes. Every node registers
  our TTL types (TTL_BUCKETS) at start; records carry their own expiry too.
- A UDP port already in use makes run() abort the whole process (an
  uncaught C++ exception on the DHT thread): we try the port first.
- Listen callbacks keep firing (with expired=True) during shutdown, from
  the DHT thread: callbacks check our running flag and never touch a
  closed event loop.
- Anyone can write anything under any key, and OpenDHT identities can
  neither be persisted through the binding nor use EC keys: we sign records
  with the coordinator's own secp256k1 key (records.py) and filter on read.
- The per-IP rate limit (default 1600/8 = 200 requests/s per address)
  counts all loopback nodes as one peer: simulations lift it
  (OverlaySettings.loopback()).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable

import opendht as dht
from bitcoinx import PrivateKey

from . import records, state as state_file
from .interface import Accept, AcceptPublisher, BaseOverlay, ListenHandle, OverlayError, PeerInfo, RawSink, Stop
from .settings import OverlaySettings, parse_endpoint

log = logging.getLogger("microgrid.overlay")

# Our value types: one per lifetime bucket. A record of ttl_s seconds is
# stored under the smallest bucket >= ttl_s; the record's own signed expiry
# is what readers enforce to the second.
TTL_BUCKETS = (2, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400)
VALUE_TYPE_BASE = 0x6D00  # "m"



@dataclass
class _Parked:
    """A runner whose shutdown had not confirmed when stop() gave up
    waiting: its thread still runs and its sockets stay bound until it is
    joined, which start() does once the confirmation came (a restart in the
    same process reuses the port)."""

    runner: Any
    fired: threading.Event
    port: int


_PARKED: list[_Parked] = []
# How long start() waits for a parked runner holding its port to confirm:
# operations in flight end within OpenDHT's own timeouts (about 7 s when
# every peer died, measured).
PARKED_WAIT_S = 60.0

# Value.size counts the user_type too.
TAG_SLACK = 64
JOIN_GRACE_S = 0.05
PEER_GOOD_S = 120.0  # answered within this: "good"
PEER_FORGET_S = 1800.0  # not heard of for this long: forgotten
PEER_REFRESH_S = 30.0
PEER_SAMPLE_S = 1.0
MAX_PEERS_KEPT = 256


def value_type_for(ttl_s: int) -> int:
    for i, bucket in enumerate(TTL_BUCKETS):
        if ttl_s <= bucket:
            return VALUE_TYPE_BASE + i
    raise records.RecordError(f"ttl_s={ttl_s}: longer than the longest lifetime {TTL_BUCKETS[-1]} s")


def _value_types() -> list[Any]:
    return [dht.ValueType(VALUE_TYPE_BASE + i, f"microgrid-{b}s", timedelta(seconds=b))
            for i, b in enumerate(TTL_BUCKETS)]


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OverlayError(f"overlay cannot bind UDP {host} port {port}: {e.strerror}; "
                               "expected a free port (is another coordinator running?)") from None


class Overlay(BaseOverlay):
    """One OpenDHT node on our private network, publishing signed records."""

    def __init__(self, signing_key: PrivateKey, settings: OverlaySettings, *,
                 clock: Callable[[], float] = time.time, accept: Accept | None = None,
                 accept_publisher: AcceptPublisher | None = None, shards: int | None = None) -> None:
        super().__init__(signing_key, clock, accept, accept_publisher,
                         settings.shards if shards is None else shards)
        self.settings = settings.validate()
        self._runner: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._tokens: list[Any] = []
        self._bound: list[str] = []
        self._peers: dict[str, tuple[str, float]] = {}
        self._peers_lock = threading.Lock()
        self._peers_sampled = 0.0
        self.port = 0
        self.node_id = ""

    # -- life cycle -------------------------------------------------------

    async def start(self) -> None:
        if self.running:
            return
        s = self.settings
        self._loop = asyncio.get_running_loop()
        saved = state_file.load(s.state_path) if s.state_path else state_file.OverlayState()
        await join_parked({p for p in (s.port, saved.port) if p})
        port = s.port
        if port == 0 and saved.port:
            try:  # the same port again: peers that knew us find us there
                self._check_ports(saved.port)
                port = saved.port
            except OverlayError:
                port = 0
        elif port:
            self._check_ports(port)
        config = dht.DhtConfig()  # fresh per run(): run()'s default is shared
        config.setNetwork(s.network_id)
        config.setPeerDiscovery(s.lan_discovery, s.lan_discovery)
        config.setMaintainStorage(s.maintain_storage)
        if s.rate_limit or s.peer_rate_limit:
            config.setRateLimit(s.rate_limit, s.peer_rate_limit)
        if saved.node_id:
            config.setNodeId(dht.InfoHash(saved.node_id.encode()))
        runner = dht.DhtRunner()
        runner.run(port=port, ipv4=s.bind4, ipv6=s.bind6, config=config)
        # Calls that take the engine lock, made now while no operation of
        # ours can be running a Python callback on the DHT thread.
        for vt in _value_types():  # after run(): before it, registerType segfaults
            runner.registerType(vt)
        self._bound = [str(runner.getBound(socket.AF_INET))]
        if s.bind6:
            self._bound.append(str(runner.getBound(socket.AF_INET6)))
        self.port = int(runner.getBound(socket.AF_INET).getPort())
        self.node_id = str(runner.getNodeId())
        self._runner = runner
        self.running = True
        peers = list(dict.fromkeys(s.bootstrap + saved.peers))
        for entry in peers:
            try:
                host, p = parse_endpoint(entry)
            except ValueError:
                continue
            if (host, p) in ((s.bind4, self.port), (s.bind6, self.port)):
                continue
            runner.bootstrap(host, str(p))
        log.info("overlay node %s on port %d, network %#x, %d bootstrap peers%s",
                 self.node_id[:12], self.port, s.network_id, len(peers),
                 ", LAN discovery on" if s.lan_discovery else "")
        self._tasks.append(asyncio.create_task(self._refresh_peers_periodically()))
        if s.state_path:
            self.save_state()
            self._tasks.append(asyncio.create_task(self._save_periodically()))

    async def stop(self) -> None:
        if not self.running:
            return
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        if self.settings.state_path:
            self.save_state()
        self.running = False  # from here on, engine callbacks return False
        runner, self._runner = self._runner, None
        assert self._loop is not None
        fired = threading.Event()
        confirmed: asyncio.Future[bool] = self._loop.create_future()

        def on_shutdown() -> None:
            self._post(_resolve, confirmed, True)
            fired.set()

        runner.shutdown(on_shutdown)
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), self.settings.stop_timeout_s)
        except asyncio.TimeoutError:
            pass
        if fired.is_set():
            # join() blocks holding the GIL (the binding does not release
            # it), so it must not start while the DHT thread still needs the
            # GIL: before the shutdown callback (our operations' callbacks)
            # and until that callback has returned out of Python, which the
            # pause lets it do.
            await asyncio.sleep(JOIN_GRACE_S)
            runner.join()
        else:
            # Joining now could hang for good, and so could the runner's
            # destructor (it joins): keep it referenced; start() joins it
            # once confirmed. OpenDHT confirms only once every operation in
            # flight ended (lookups waiting on dead nodes) and, with
            # maintain_storage, stored values were handed over.
            _PARKED.append(_Parked(runner, fired, self.port))
            log.warning("overlay: OpenDHT did not confirm shutdown within %.1f s (operations still in "
                        "flight or values being handed over); its thread finishes alone and is joined "
                        "before another node starts on port %d", self.settings.stop_timeout_s, self.port)
        self._tokens.clear()

    def _check_ports(self, port: int) -> None:
        _check_port_free(self.settings.bind4, port)
        if self.settings.bind6:
            _check_port_free(self.settings.bind6, port)

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.state_save_s)
            self.save_state()

    def save_state(self) -> None:
        if not self.settings.state_path or self._runner is None:
            return
        peers = [p.address for p in self.peers()]
        old = state_file.load(self.settings.state_path).peers
        # Keep earlier peers after the current ones: after a restart our
        # table may be nearly empty while the old peers still run.
        merged = list(dict.fromkeys(peers + old))[:state_file.MAX_SAVED_PEERS]
        state_file.save(self.settings.state_path, state_file.OverlayState(
            node_id=self.node_id, port=self.port, peers=merged, saved_at=self.clock()))

    def bound_addresses(self) -> list[str]:
        """The addresses the engine's sockets are bound to (read once, right
        after run(): getBound() takes the engine lock, see module doc)."""
        return list(self._bound)

    # -- peers ------------------------------------------------------------

    def peers(self) -> list[PeerInfo]:
        """Nodes that answered our lookups recently, newest first. Built
        from the engine's done callbacks, not from getRoutingTablesLog(),
        which takes the engine lock while holding the GIL (see module doc)."""
        now = time.monotonic()
        with self._peers_lock:
            items = sorted(self._peers.items(), key=lambda kv: -kv[1][1])
        return [PeerInfo(node_id, addr, "good" if now - seen < PEER_GOOD_S else "dubious")
                for node_id, (addr, seen) in items if now - seen < PEER_FORGET_S]

    def _saw_nodes(self, nodes: Any) -> None:
        """On the DHT thread: remember who answered. At most every
        PEER_SAMPLE_S: reading the node list holds the GIL on the engine's
        thread, and a peer list seconds old is fresh enough."""
        now = time.monotonic()
        if now - self._peers_sampled < PEER_SAMPLE_S and self._peers:
            return
        self._peers_sampled = now
        try:
            seen = [(str(n.getId()), n.getNode().getAddr()) for n in nodes]
        except Exception:  # never let an exception into the engine
            return
        with self._peers_lock:
            for node_id, addr in seen:
                if node_id != self.node_id:
                    self._peers[node_id] = (addr.decode() if isinstance(addr, bytes) else str(addr), now)
            if len(self._peers) > MAX_PEERS_KEPT:
                for node_id, _ in sorted(self._peers.items(), key=lambda kv: kv[1][1])[:len(self._peers) - MAX_PEERS_KEPT]:
                    del self._peers[node_id]

    async def _refresh_peers_periodically(self) -> None:
        # A lookup of our own id first (it is how a Kademlia node joins),
        # then of random ids: keeps the engine's table and our peer list fresh.
        target = self.node_id
        while True:
            await self._get_raw_hash(dht.InfoHash(target.encode()), self.settings.get_timeout_s)
            await asyncio.sleep(PEER_REFRESH_S)
            target = str(dht.InfoHash.getRandom())

    # -- engine operations ------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """From a DHT thread to our loop; silently nothing once closed."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed between the check and the call
            pass

    async def _put_raw(self, key: str, data: bytes, ttl_s: int, tag: str) -> bool:
        runner = self._runner
        value = dht.Value(data, value_type_for(ttl_s))
        if tag:
            value.user_type = tag
        assert self._loop is not None
        fut: asyncio.Future[bool] = self._loop.create_future()

        def done(ok: bool, nodes: Any) -> None:
            self._saw_nodes(nodes)
            self._post(_resolve, fut, bool(ok))

        runner.put(dht.InfoHash.get(key), value, done)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.settings.put_timeout_s)
        except asyncio.TimeoutError:
            log.warning("overlay put under %r not confirmed within %.1f s", key, self.settings.put_timeout_s)
            return False

    def _timeout(self, timeout_s: float | None) -> float:
        return self.settings.get_timeout_s if timeout_s is None else timeout_s

    async def _stream(self, key: str, tag: str | None, sink: RawSink, stop: asyncio.Event,
                      timeout_s: float) -> None:
        where = None
        if tag is not None:
            where = dht.Where()
            where.userType(tag)  # evaluated by the storing nodes
        await self._stream_hash(dht.InfoHash.get(key), where, sink, stop, timeout_s)

    async def _stream_hash(self, infohash: Any, where: Any, sink: RawSink, stop: asyncio.Event,
                           timeout: float) -> None:
        runner = self._runner
        assert self._loop is not None
        fut: asyncio.Future[bool] = self._loop.create_future()
        open_ = [True]

        def deliver(data: bytes) -> None:
            if open_[0]:
                sink(data)

        def on_value(v: Any) -> bool:
            if not open_[0] or not self.running:
                return False  # stops the engine's search
            if _small(v):
                self._post(deliver, v.data)
            return True

        def on_done(ok: bool, nodes: Any) -> None:
            self._saw_nodes(nodes)
            self._post(_resolve, fut, bool(ok))

        if where is None:
            runner.get(infohash, on_value, on_done)
        else:
            runner.get(infohash, on_value, on_done, where=where)
        # One future ends the read: the search's done callback, `stop` or
        # the timeout resolve it, and the read resumes in the next loop
        # iteration (no asyncio.wait, wait_for or task per read: each would
        # add loop iterations). Values posted before the done callback are
        # delivered before it (call_soon_threadsafe is FIFO).
        timer = self._loop.call_later(timeout, _resolve, fut, False)
        if isinstance(stop, Stop):
            stop.on_set(lambda: _resolve(fut, True))
            stopper = None
        else:
            stopper = asyncio.ensure_future(stop.wait())
            stopper.add_done_callback(lambda _t: _resolve(fut, True))
        try:
            await fut
        finally:
            timer.cancel()
            if stopper is not None:
                stopper.cancel()
            open_[0] = False

    async def _get_raw_hash(self, infohash: Any, timeout: float) -> list[bytes]:
        found: list[bytes] = []
        await self._stream_hash(infohash, None, found.append, Stop(), timeout)
        return found

    def _listen_raw(self, key: str, handle: ListenHandle) -> None:
        def on_value(v: Any, expired: bool) -> bool:
            if handle.cancelled or not self.running:
                return False  # the only way to stop a listen (see module doc)
            if not expired and _small(v):
                self._post(handle._deliver_raw, v.data)
            return True

        self._tokens.append(self._runner.listen(dht.InfoHash.get(key), on_value))


async def join_parked(ports: Iterable[int] = (), wait_s: float = PARKED_WAIT_S) -> int:
    """Join the parked runners (see `_Parked`) whose shutdown has confirmed
    by now, first waiting up to `wait_s` for those holding one of `ports`:
    a node never starts while an old one of this process still runs on its
    port (it could not bind) and a stopped node's thread does not outlive
    the next start. Returns how many are still parked."""
    ports = set(ports)
    for p in list(_PARKED):
        if p.port in ports and not p.fired.is_set():
            deadline = time.monotonic() + wait_s
            while not p.fired.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if not p.fired.is_set():
                raise OverlayError(f"overlay: the previous node on port {p.port} has not finished its "
                                   f"shutdown after {wait_s:.0f} s; cannot start another on that port")
        if p.fired.is_set():
            await asyncio.sleep(JOIN_GRACE_S)  # its callback returns out of Python first (see stop)
            p.runner.join()
            _PARKED.remove(p)
    return len(_PARKED)


def _small(v: Any) -> bool:
    """Size first (data plus user_type, read without copying the data): an
    oversized value is never copied into Python."""
    return bool(v.size <= records.MAX_RECORD_BYTES + TAG_SLACK and len(v.data) <= records.MAX_RECORD_BYTES)


def _resolve(fut: "asyncio.Future[bool]", ok: bool) -> None:
    if not fut.done():
        fut.set_result(ok)
