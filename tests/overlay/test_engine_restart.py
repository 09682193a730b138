"""A coordinator restarted in the same process (the demo's scripted
restart, a service manager's quick restart) gets its overlay port back:
a node whose shutdown OpenDHT had not confirmed when stop() stopped
waiting is joined before the next node starts on that port, instead of
leaving its thread running and the port bound (issue 17: the restarted
coordinator could not start its node, and its peers lost its directory
entry)."""

from __future__ import annotations

import asyncio
import socket

from bitcoinx import PrivateKey

from microgrid.coordinator.overlay import OverlaySettings, engine
from microgrid.coordinator.overlay.engine import Overlay

from .conftest import start_nodes, stop_all


def _bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_a_node_stopped_with_a_lookup_in_flight_is_joined_before_its_port_is_used_again() -> None:
    async def go() -> None:
        key = PrivateKey.from_random()
        node = Overlay(key, OverlaySettings.loopback(maintain_storage=False, stop_timeout_s=0.3, get_timeout_s=0.2))
        await node.start()
        peers = await start_nodes(4)
        for p in peers:  # they bootstrap from each other; tell ours about them
            node._runner.bootstrap("127.0.0.1", str(p.port))
        assert await node.put("dir/me", b"here", 600)
        await stop_all(peers)  # every peer gone: our next lookup waits on dead nodes
        assert await node.get("dir/other") == []  # our timeout; OpenDHT's search goes on
        port = node.port
        await node.stop()
        # Not confirmed in 0.3 s: parked, its port still bound.
        # (Other tests of this worker may have parked nodes of their own.)
        assert len([p for p in engine._PARKED if p.port == port]) == 1 and _bound(port)
        again = Overlay(key, OverlaySettings.loopback(port=port, maintain_storage=False))
        await again.start()  # waits for the old node's search to end, joins it, binds
        try:
            assert not [p for p in engine._PARKED if p.port == port] and again.port == port
            assert await again.put("dir/me", b"back", 600) in (True, False)  # usable (alone: nobody confirms)
        finally:
            await again.stop()
        # Its own put may still be in flight (alone, nobody answers): then it
        # is parked in turn, and joining it releases the port.
        await engine.join_parked({port}, wait_s=30)
        assert not [p for p in engine._PARKED if p.port == port] and not _bound(port)
    asyncio.run(go())


def test_a_parked_node_that_never_confirms_is_a_clear_error_not_a_second_engine() -> None:
    class Never:
        joined = False

        def join(self) -> None:
            self.joined = True

    async def go() -> None:
        import threading

        parked = engine._Parked(Never(), threading.Event(), 4999)
        engine._PARKED.append(parked)
        try:
            try:
                await engine.join_parked({4999}, wait_s=0.2)
            except engine.OverlayError as e:
                assert "port 4999 has not finished its shutdown" in str(e)
            else:
                raise AssertionError("started beside a node still running on its port")
            assert parked.runner.joined is False  # joining before the confirmation can hang for good
            await engine.join_parked({1234})  # other ports are not held up
            assert parked in engine._PARKED
            parked.fired.set()
            await engine.join_parked()
            assert parked not in engine._PARKED and parked.runner.joined
        finally:
            if parked in engine._PARKED:
                engine._PARKED.remove(parked)
    asyncio.run(go())
