"""The peer directory on real OpenDHT nodes: every coordinator finds every
other; after a quarter die without warning, the survivors keep
re-publishing and still find each other; nobody can pose as another."""

from __future__ import annotations

import asyncio
import random

import pytest

from microgrid.coordinator.overlay import MemoryNetwork, MemoryOverlay
from microgrid.coordinator.overlay.directory import Directory, directory_key

from .conftest import eventually, start_nodes, stop_all


def test_survivors_republish_and_find_each_other_after_a_quarter_dies() -> None:
    async def go() -> None:
        victims = set(random.Random(11).sample(range(2, 16), 4))
        nodes = await start_nodes(16, seeds=2, overrides={i: dict(maintain_storage=True, stop_timeout_s=1.0)
                                                          for i in range(16) if i not in victims})
        dirs = [Directory(n, {"coap": f"coap://127.0.0.1:{6000 + i}/channel"}, ttl_s=60, republish_s=0.5)
                for i, n in enumerate(nodes)]
        stop = asyncio.Event()
        tasks = [asyncio.ensure_future(d.run(stop)) for d in dirs]
        try:
            await asyncio.sleep(0.3)
            for i in victims:  # no goodbye: to the others, a crash
                tasks[i].cancel()
            await asyncio.gather(*(nodes[i].stop() for i in victims))
            survivors = [i for i in range(16) if i not in victims]
            published_before = {i: dirs[i].published for i in survivors}

            async def all_republished() -> bool:
                return all(dirs[i].published > published_before[i] for i in survivors)
            # A put waits for the dead nodes it tries to time out: allow it.
            assert await eventually(all_republished, timeout=30), "survivors stopped re-publishing"
            lookups = [(a, b) for a in survivors for b in survivors if a != b]
            found = await asyncio.gather(*(dirs[a].lookup(dirs[b].public_hex) for a, b in lookups))
            ok = sum(1 for (a, b), c in zip(lookups, found) if c == dirs[b].contact)
            assert ok / len(lookups) >= 0.99, f"{ok}/{len(lookups)} lookups found the entry"
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await stop_all([n for i, n in enumerate(nodes) if i not in victims])
    asyncio.run(go())


def test_an_entry_written_by_another_key_is_never_returned() -> None:
    from bitcoinx import PrivateKey

    async def go() -> None:
        net = MemoryNetwork()
        honest = MemoryOverlay(PrivateKey.from_random(), net)
        forger = MemoryOverlay(PrivateKey.from_random(), net)
        await honest.start()
        await forger.start()
        d_honest = Directory(honest, {"coap": "coap://honest/channel"}, ttl_s=60, republish_s=10)
        # The forger signs its own record under the honest coordinator's key.
        await forger.put(directory_key(d_honest.public_hex), b'{"coap": "coap://evil/channel"}', 60)
        assert await d_honest.lookup(d_honest.public_hex, attempts=1) is None
        await d_honest.publish()
        assert await Directory(forger, {}, 60, 10).lookup(d_honest.public_hex) == {"coap": "coap://honest/channel"}
    asyncio.run(go())


def test_republishing_slower_than_the_ttl_is_refused() -> None:
    with pytest.raises(ValueError, match="must be shorter than ttl_s"):
        Directory(type("O", (), {"public_key": b"\x02" * 33})(), {}, ttl_s=60, republish_s=60)


def test_a_zone_lists_its_members() -> None:
    from bitcoinx import PrivateKey

    async def go() -> None:
        net = MemoryNetwork()
        overlays = [MemoryOverlay(PrivateKey.from_random(), net) for _ in range(3)]
        for o in overlays:
            await o.start()
        dirs = [Directory(o, {"coap": f"coap://h{i}/channel", "zone": "elm" if i < 2 else "oak",
                              "capabilities": "market"}, ttl_s=60, republish_s=10) for i, o in enumerate(overlays)]
        for d in dirs:
            await d.publish()
        elm = await dirs[2].members("elm")
        assert set(elm) == {dirs[0].public_hex, dirs[1].public_hex}
        assert elm[dirs[1].public_hex]["coap"] == "coap://h1/channel"
        assert set(await dirs[0].members("oak")) == {dirs[2].public_hex}
    asyncio.run(go())
