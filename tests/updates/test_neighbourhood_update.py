"""The bar of issue 20 in one test: three coordinators (in-memory overlay,
real CoAP on 127.0.0.1), a release made at one reaches all three through
the overlay, and a meter at each (the real firmware in the MicroPython
unix port, each runtime) updates from its own coordinator; no reading is
lost or stored twice across the update.

The coordinators' readings resource here is a stand-in that verifies and
keeps each reading in memory and acknowledges it as ingest does
("stored DEVICE/SEQ t=..."); the update path (offer, fw/ resources, peer
fetch, reports) is the real one."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from pathlib import Path

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers.codes import Code

from microgrid.coordinator.overlay.memory import MemoryNetwork
from microgrid.coordinator.updates.offer import OfferingReadings
from microgrid.flash.image import write_image
from microgrid.flash.unix_port import boot
from microgrid.shared import reading, release, secp256k1

from .test_peer_delivery import KEY, Node, until


def stand_in_image(version: str, size: int, seed: int) -> bytes:
    head = b"MGFW " + json.dumps({"version": version}).encode() + b"\n"
    return head + random.Random(seed).randbytes(size - len(head))


class Readings(resource.Resource):
    """Verify, keep and acknowledge readings (a stand-in for ingest/)."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        super().__init__()
        self.keys = keys
        self.stored: dict[str, list[int]] = {}

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        r = reading.parse(request.payload)
        assert reading.verify(r, self.keys[r.device])
        seqs = self.stored.setdefault(r.device, [])
        if r.seq in seqs:
            return aiocoap.Message(code=Code.CONFLICT, payload=b"duplicate")
        seqs.append(r.seq)
        return aiocoap.Message(code=Code.CREATED, payload=f"stored {r.device}/{r.seq} t={int(time.time())}".encode())


def test_a_release_reaches_three_coordinators_and_every_meter_updates(tmp_path: Path, mp_runtime: str) -> None:
    pub = secp256k1.public_key(KEY)
    new = stand_in_image("0.3.0", 13_000, 2)
    meters: dict[str, tuple[Path, bytes]] = {}

    async def main() -> dict[str, list[int]]:
        net = MemoryNetwork()
        nodes = [Node(tmp_path, n, net) for n in "abc"]
        for n in nodes:
            n.settings.board = "unix"
        keys: dict[str, bytes] = {}
        for i, n in enumerate(nodes):
            secret = bytes([i + 70]) * 32
            mpub = secp256k1.public_key(secret)
            keys[reading.device_id(mpub)] = mpub
            image = write_image(tmp_path / f"meter{i}", {
                "device_name": f"meter{i}", "coordinator_port": n.port, "interval_s": 0.02, "max_readings": 20,
                "clock_start": 1_700_000_000, "ack_timeout_s": 0.2, "retry_after_s": 0.2,
                "meter": {"type": "simulated", "profile": "prosumer", "seed": i + 1},
                "updates": {"board": "unix", "keys": [pub.hex()]}}, secret)
            (image / "ota_0.bin").write_bytes(stand_in_image("0.2.0", 9_000, 1))
            meters[reading.device_id(mpub)] = (image, mpub)
        stand_in = Readings(keys)
        for n in nodes:
            await n.start()
            n.service.device_key = keys.get
            assert n.service.site is not None
            n.service.site.add_resource(["readings"], OfferingReadings(stand_in, n.service.offer_suffix))
        try:
            signed = release.sign(KEY, release.make_manifest(new, "0.3.0", "unix", "0.2.0", "neighbourhood"))
            rel = await nodes[0].service.add_local(signed, new)
            await until(lambda: all(rel.release_id() in n.store.releases
                                    and n.store.complete(n.store.releases[rel.release_id()]) for n in nodes))

            def run_meter(image: Path) -> str:
                log = ""
                for _ in range(8):
                    p = boot(image, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                    out, _ = p.communicate(timeout=120)
                    assert p.returncode in (0, 3) and "Traceback" not in out, out[-3000:]
                    log += out
                    if "confirmed" in log and not (image / "ota.json").exists():
                        break  # confirmed and reported
                return log

            logs = await asyncio.gather(*(asyncio.to_thread(run_meter, image) for image, _ in meters.values()))
            for log in logs:
                assert "running 0.3.0 confirmed" in log, log[-3000:]
            # Each coordinator heard its meter's signed report.
            await until(lambda: sum(len(n.service.rollout.meters) for n in nodes) == 3, timeout=10)
            for n in nodes:
                assert [m["version"] for m in n.service.rollout.meters.values()] == ["0.3.0"]
            return stand_in.stored
        finally:
            for n in nodes:
                await n.stop()

    stored = asyncio.run(main())
    assert len(stored) == 3
    for device, seqs in stored.items():
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 20, (device, seqs)
        image, _ = meters[device]
        assert json.loads((image / "ota.last").read_text())["installed"] == {"version": "0.3.0", "from": "0.2.0"}
        assert (image / "ota_1.bin").read_bytes()[:len(new)] == new
