"""SIGTERM (or SIGKILL) while 40 meters send as fast as the coordinator
answers: every reading it acknowledged is in the database afterwards."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import pytest

from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.loadgen import SimulatedSender, drive

from ..conftest import free_udp_port


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_acknowledged_reading_is_lost_when_stopped_under_heavy_load(tmp_path: Path, coordinator_factory,
                                                                         sig: signal.Signals) -> None:
    db = tmp_path / "c.db"
    rng = random.Random(5)
    senders = [SimulatedSender(rng, t0=int(time.time()) - 10_000) for _ in range(40)]
    store = ReadingStore(open_database(db))
    for s in senders:
        store.register_device(s.public_key)
    store.db.close()
    port = free_udp_port()
    coordinator = coordinator_factory(db=db, port=port)

    async def load_then_stop() -> None:
        loop = asyncio.get_running_loop()
        # Stop the coordinator 1.5 s into a 3 s burst.
        loop.call_later(1.5, coordinator.proc.send_signal, sig)
        await drive(senders, port, 3.0)

    asyncio.run(load_then_stop())
    coordinator.proc.wait(15)
    if sig == signal.SIGTERM:
        assert coordinator.proc.returncode == 0
    acked = {(s.device_id, seq) for s in senders for seq in s.acked}
    assert len(acked) > 500, "the load was not heavy enough to mean anything"
    store = ReadingStore(open_database(db))
    stored = {(r["device_id"], r["seq"]) for r in store.readings()}
    store.db.close()
    missing = acked - stored
    assert not missing, f"{len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:3]}"
