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
        # Stop the coordinator once it has acknowledged 400 readings (by
        # count, not by time: a slow machine gets there later), then keep
        # the meters sending into the stop for 1.5 s more.
        load = asyncio.ensure_future(drive(senders, port, 60.0))
        deadline = time.monotonic() + 45.0
        while sum(len(s.acked) for s in senders) < 400 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        coordinator.proc.send_signal(sig)
        await asyncio.sleep(1.5)
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)

    asyncio.run(load_then_stop())
    coordinator.proc.wait(15)
    if sig == signal.SIGTERM:
        assert coordinator.proc.returncode == 0
    acked = {(s.device_id, seq) for s in senders for seq in s.acked}
    assert len(acked) >= 400, "the load was not heavy enough to mean anything"
    store = ReadingStore(open_database(db))
    stored = {(r["device_id"], r["seq"]) for r in store.readings()}
    store.db.close()
    missing = acked - stored
    assert not missing, f"{len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:3]}"
