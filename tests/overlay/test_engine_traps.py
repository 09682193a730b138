"""Each trap of the OpenDHT Python binding that engine.py works around,
proven on real nodes (see the module docstring of engine.py)."""

from __future__ import annotations

import asyncio
import inspect
import random
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.overlay import OverlayError, OverlaySettings
from microgrid.coordinator.overlay import engine
from microgrid.coordinator.overlay.engine import Overlay

from .conftest import REPO_ROOT, eventually, start_nodes, stop_all


def test_node_binds_only_the_configured_loopback_addresses() -> None:
    async def go() -> None:
        (node,) = await start_nodes(1)
        try:
            assert node.bound_addresses() == [f"127.0.0.1:{node.port}", f"[::1]:{node.port}"]
        finally:
            await node.stop()
    asyncio.run(go())


def test_each_run_gets_its_own_config_so_network_ids_do_not_leak_between_nodes() -> None:
    # With run()'s shared default DhtConfig, the second node's network id
    # would be whatever the last configured run left behind.
    async def go() -> None:
        a = Overlay(PrivateKey.from_random(), OverlaySettings.loopback(network_id=1001))
        await a.start()
        boot = [f"127.0.0.1:{a.port}"]
        b = Overlay(PrivateKey.from_random(), OverlaySettings.loopback(network_id=2002, bootstrap=boot))
        c = Overlay(PrivateKey.from_random(), OverlaySettings.loopback(network_id=1001, bootstrap=boot))
        await b.start()
        await c.start()
        try:
            assert len({a.node_id, b.node_id, c.node_id}) == 3
            await a.put("k", b"net 1001", 60)
            assert [r.body for r in await c.get("k", 2)] == [b"net 1001"]
            assert await b.get("k", 1) == []
        finally:
            await stop_all([a, b, c])
    asyncio.run(go())


@pytest.mark.parametrize("bind6", ["::1", ""])
def test_cancelled_listen_delivers_nothing_more_even_on_an_ipv4_only_node(bind6: str) -> None:
    # On an IPv4-only node the engine ignores the callback's False; our
    # handle still stops deliveries. cancelListen() is never called.
    async def go() -> None:
        nodes = await start_nodes(3)
        v4only = Overlay(PrivateKey.from_random(), OverlaySettings.loopback(
            bind6=bind6, bootstrap=[f"127.0.0.1:{nodes[0].port}"], maintain_storage=False))
        await v4only.start()
        try:
            seen: list[bytes] = []
            handle = v4only.listen("k", lambda r: seen.append(r.body))
            await nodes[1].put("k", b"one", 60, slot="1")

            async def got_one() -> bool:
                return seen == [b"one"]
            assert await eventually(got_one, 5)
            handle.cancel()
            for i in range(3):
                await nodes[1].put("k", b"more", 60, slot=f"m{i}")
            await asyncio.sleep(0.5)
            assert seen == [b"one"]
        finally:
            await stop_all(nodes + [v4only])
    asyncio.run(go())


def test_wrapper_never_calls_cancel_listen() -> None:
    code = [line for line in inspect.getsource(engine).splitlines() if not line.lstrip().startswith("#")]
    calls = [line for line in code if ".cancelListen(" in line]
    assert calls == []


def test_stop_with_listens_and_operations_in_flight_never_hangs() -> None:
    # join() before the shutdown callback (or while the DHT thread still
    # needs the GIL) deadlocks the whole process, so run it in a child with
    # a deadline: 15 start/stop cycles of 4 busy nodes.
    script = textwrap.dedent("""
        import asyncio, sys
        sys.path.insert(0, %r)
        from tests.overlay.conftest import start_nodes, stop_all
        async def main():
            for cycle in range(15):
                nodes = await start_nodes(4)
                for i, n in enumerate(nodes):
                    n.listen(f"k{i}", lambda r: None)
                pending = [asyncio.ensure_future(n.put(f"k{(i + 1) %% 4}", b"x", 60)) for i, n in enumerate(nodes)]
                pending += [asyncio.ensure_future(n.get(f"k{i}", 1)) for i, n in enumerate(nodes)]
                await asyncio.sleep(0.01 * (cycle %% 3))
                await stop_all(nodes)
                await asyncio.gather(*pending, return_exceptions=True)
            print("CYCLES DONE")
        asyncio.run(main())
    """) % str(REPO_ROOT)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "CYCLES DONE" in proc.stdout, proc.stderr[-2000:]
    assert time.monotonic() - t0 < 45


def test_get_and_put_return_within_our_timeouts_when_the_network_is_unreachable() -> None:
    async def go() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:  # bound, never answers
            dead.bind(("127.0.0.1", 0))
            node = Overlay(PrivateKey.from_random(), OverlaySettings.loopback(
                bootstrap=[f"127.0.0.1:{dead.getsockname()[1]}"], put_timeout_s=0.5))
            await node.start()
            try:
                t0 = time.monotonic()
                assert await node.get("k", timeout_s=0.5) == []
                assert time.monotonic() - t0 < 1.5
                t0 = time.monotonic()
                assert await node.put("k", b"x", 60) is False
                assert time.monotonic() - t0 < 1.5
            finally:
                await node.stop()
    asyncio.run(go())


def test_port_in_use_is_an_error_not_a_process_abort() -> None:
    async def go() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            node = Overlay(PrivateKey.from_random(), OverlaySettings.loopback(port=port))
            with pytest.raises(OverlayError, match=f"port {port}"):
                await node.start()
            assert not node.running
    asyncio.run(go())


def test_every_ttl_maps_to_a_registered_type_no_shorter_than_asked() -> None:
    for ttl in (1, 2, 3, 59, 60, 61, 3600, 86400):
        bucket = engine.TTL_BUCKETS[engine.value_type_for(ttl) - engine.VALUE_TYPE_BASE]
        assert bucket >= ttl
    with pytest.raises(ValueError):
        engine.value_type_for(86401)


def test_loopback_settings_lift_the_per_ip_rate_limit() -> None:
    # All loopback nodes share one source IP; OpenDHT's default of 200
    # requests/s per IP would throttle a 50-node simulation as one peer.
    s = OverlaySettings.loopback()
    assert (s.peer_rate_limit, s.rate_limit) == (-1, -1)
    assert OverlaySettings().peer_rate_limit == 0  # field default: OpenDHT's


def test_lan_discovery_is_off_unless_asked() -> None:
    # Two nodes of one network, no bootstrap: with discovery off (the
    # default) they never meet. (Discovery itself cannot be shown on
    # loopback-only sockets: peers announce their LAN address.)
    async def go() -> None:
        net = random.randrange(10_000, 2**31)
        assert OverlaySettings().lan_discovery is False
        quiet = [Overlay(PrivateKey.from_random(), OverlaySettings.loopback(network_id=net, maintain_storage=False))
                 for _ in range(2)]
        for n in quiet:
            await n.start()
        try:
            await quiet[0].put("k", b"x", 60)
            await asyncio.sleep(1.0)
            assert await quiet[1].get("k", 1) == []
            assert quiet[0].peers() == [] and quiet[1].peers() == []
        finally:
            await stop_all(quiet)
    asyncio.run(go())
