"""Releases spread between coordinators through the overlay (in-memory
overlay, real CoAP on 127.0.0.1): verified chunks, resume, a peer serving a
bad chunk avoided, untrusted releases refused, meters offered updates only
in their window."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import aiocoap
import aiocoap.resource as resource
import cbor2
import pytest
from bitcoinx import PrivateKey

from microgrid.coordinator.overlay.memory import MemoryNetwork, MemoryOverlay
from microgrid.coordinator.updates import transport
from microgrid.coordinator.updates.peers import FetchPlan, RateLimit, parse_announcement, AnnouncementError
from microgrid.coordinator.updates.service import UpdateService
from microgrid.coordinator.updates.settings import UpdatesSettings, UpdatesSettingsError, in_window, parse_window
from microgrid.coordinator.updates.store import ReleaseStore
from microgrid.processes import free_udp_port
from microgrid.shared import release, secp256k1

KEY = bytes(range(1, 33))
PUB = secp256k1.public_key(KEY)
ROGUE = bytes(range(5, 37))
IMAGE = random.Random(20).randbytes(50_000)  # 13 chunks, all different


def made(image: bytes = IMAGE, version: str = "0.3.0", key: bytes = KEY) -> bytes:
    return release.sign(key, release.make_manifest(image, version, "esp32-devkitc", "0.2.0", "test"))


class Node:
    def __init__(self, tmp: Path, name: str, net: MemoryNetwork, window: str = "") -> None:
        self.port = free_udp_port()
        self.settings = UpdatesSettings(enabled=True, release_keys=[PUB.hex()], window=window,
                                        rate_bytes_s=1_000_000)
        self.folder = tmp / name
        self.folder.mkdir(exist_ok=True)
        self.overlay = MemoryOverlay(PrivateKey.from_random(), net)
        self.minute = 3 * 60

    async def start(self) -> "Node":
        self.store = ReleaseStore(self.folder, self.settings.keys())
        self.service = UpdateService(self.settings, self.store, self.overlay, f"127.0.0.1:{self.port}",
                                     minute_of_day=lambda: self.minute)
        site = resource.Site()
        self.service.attach(site)
        self.server = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", self.port))
        self.client = await aiocoap.Context.create_client_context()
        if not self.overlay.running:
            await self.overlay.start()
        await self.service.start(self.client)
        return self

    async def stop(self) -> None:
        await self.service.stop()
        await self.server.shutdown()
        await self.client.shutdown()


async def until(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def test_a_release_made_at_one_coordinator_reaches_all_three(tmp_path: Path) -> None:
    async def main() -> None:
        net = MemoryNetwork()
        a, b, c = [await Node(tmp_path, n, net).start() for n in "abc"]
        try:
            rel = await a.service.add_local(made(), IMAGE)
            await until(lambda: all(n.store.releases.get(rel.release_id()) is not None
                                    and n.store.complete(n.store.releases[rel.release_id()]) for n in (b, c)))
            for n in (b, c):
                got = n.store.releases[rel.release_id()]
                assert b"".join(n.store.chunk(got, i) or b"" for i in range(len(got.chunks))) == IMAGE
                assert n.service.counts["bad_chunks"] == 0
                # And each now offers it to its meters, served block-wise.
                assert n.service.offer_suffix() == " fw=0.3.0"
            served = sum(n.service.counts["bytes_served"] for n in (a, b, c))
            assert served >= 2 * len(IMAGE)
            # A meter's view: the manifest and a block of the image over CoAP.
            signed = await transport.get_manifest(c.client, f"127.0.0.1:{c.port}", rel.release_id())
            assert release.verify(signed, [PUB]).release_id() == rel.release_id()
            block, more = await transport.get_block(c.client, f"127.0.0.1:{c.port}", ["fw", "manifest"], 0)
            assert block == signed[:1024] and more == (len(signed) > 1024)
            chunk = await transport.get_chunk(c.client, f"127.0.0.1:{c.port}", rel, 12)
            assert chunk == IMAGE[12 * 4096:]
        finally:
            for n in (a, b, c):
                await n.stop()

    asyncio.run(main())


def test_a_peer_serving_a_bad_chunk_is_avoided_and_fetching_resumes_after_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        net = MemoryNetwork()
        good = await Node(tmp_path, "good", net).start()
        liar = await Node(tmp_path, "liar", net).start()
        rel = await good.service.add_local(made(), IMAGE)
        await until(lambda: rel.release_id() in liar.store.releases
                    and liar.store.complete(liar.store.releases[rel.release_id()]))
        # The liar's copies change on its disk; it keeps serving them.
        for i in range(6, 13):
            (liar.store.chunk_dir / rel.chunks[i].hex()).write_bytes(b"\x00" * rel.chunk_len(i))
        # A third coordinator that already holds chunks 0..5 from before a restart.
        late = Node(tmp_path, "late", net)
        pre = ReleaseStore(late.folder, late.settings.keys())
        pre_rel = pre.add_manifest(rel.signed, release.chunk_table(IMAGE))
        for i in range(6):
            assert pre.put_chunk(pre_rel, i, IMAGE[i * 4096:(i + 1) * 4096])
        await late.start()
        try:
            assert late.service.plans[rel.release_id()].missing == list(range(6, 13))
            # Both announce again: the late node learns both holders.
            await good.service._announce(rel)
            await liar.service._announce(rel)
            await until(lambda: late.store.complete(late.store.releases[rel.release_id()]))
            got = late.store.releases[rel.release_id()]
            assert b"".join(late.store.chunk(got, i) or b"" for i in range(13)) == IMAGE
            # Only the missing chunks were fetched; the liar was asked once.
            assert late.service.counts["chunks_fetched"] == 7
            assert late.service.counts["bad_chunks"] == 1
        finally:
            for n in (good, liar, late):
                await n.stop()

    asyncio.run(main())


def test_a_plan_stops_asking_a_peer_after_one_bad_chunk() -> None:
    rel = release.verify(made(), [PUB]).attach(release.chunk_table(IMAGE))
    plan = FetchPlan(rel, list(range(13)))
    plan.add_peer("good:1")
    plan.add_peer("liar:1")
    plan.got(0, "liar:1", False)
    assert plan.avoided() == ["liar:1"]
    asked = {plan.next(0.0)[1] for _ in range(10)}  # type: ignore[index]
    assert asked == {"good:1"}
    for _ in range(3):
        plan.failed("good:1", 0.0)
    assert plan.next(1.0) is None and plan.next(100.0) is not None  # rests, then is asked again


def test_rate_limit_spaces_chunks_by_bytes_per_second() -> None:
    rl = RateLimit(8192)
    assert rl.wait(4096, 0.0) == 0 and rl.wait(4096, 0.0) == 0
    assert rl.wait(4096, 0.0) == pytest.approx(0.5)
    assert rl.wait(4096, 0.5) == 0


def test_an_untrusted_release_is_neither_fetched_nor_offered(tmp_path: Path) -> None:
    async def main() -> None:
        net = MemoryNetwork()
        a, b = [await Node(tmp_path, n, net).start() for n in "ab"]
        try:
            # A coordinator trusting the rogue key makes and announces a release.
            a.store.keys = [secp256k1.public_key(ROGUE)]
            rogue = await a.service.add_local(made(key=ROGUE, version="9.9.9"), IMAGE)
            await until(lambda: rogue.release_id() in b.service.untrusted)
            assert rogue.release_id() not in b.store.releases and b.service.offer_suffix() == ""
            # Hostile announcements are dropped.
            with pytest.raises(AnnouncementError):
                parse_announcement(b"\xa1\x61x\x01")
        finally:
            for n in (a, b):
                await n.stop()

    asyncio.run(main())


def test_meters_are_offered_updates_only_inside_the_window(tmp_path: Path) -> None:
    async def main() -> None:
        n = await Node(tmp_path, "w", MemoryNetwork(), window="23:00-04:00").start()
        try:
            await n.service.add_local(made(), IMAGE)
            n.minute = 3 * 60
            assert n.service.offer_suffix() == " fw=0.3.0"
            n.minute = 12 * 60
            assert n.service.offer_suffix() == "" and n.service.status()["offered"] is None
        finally:
            await n.stop()

    asyncio.run(main())
    assert parse_window("") is None and in_window((23 * 60, 4 * 60), 23 * 60 + 30)
    for bad in ("2-3", "25:00-01:00", "01:00-01:00"):
        with pytest.raises(UpdatesSettingsError):
            parse_window(bad)
    with pytest.raises(UpdatesSettingsError, match="release_keys"):
        UpdatesSettings(enabled=True).validate()


def test_console_shows_releases_progress_and_the_offer(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from microgrid.coordinator.config import ConfigError, from_dict
    from microgrid.coordinator.console import Console

    async def main() -> str:
        n = await Node(tmp_path, "console", MemoryNetwork()).start()
        try:
            await n.service.add_local(made(), IMAGE)
            # A release sharing its first 4 chunks with 0.3.0 (content-addressed: held already).
            other = IMAGE[:16_384] + bytes(3_616)
            rel = n.store.add_manifest(made(version="0.4.0", image=other), release.chunk_table(other))
            n.service.plans[rel.release_id()] = FetchPlan(rel, n.store.missing(rel))
            n.service.plans[rel.release_id()].add_peer("10.0.0.9:5683")
            n.service.plans[rel.release_id()].got(0, "10.0.0.9:5683", False)
            return Console(SimpleNamespace(console_updates=n.service.status)).handle("updates")  # type: ignore[arg-type]
        finally:
            await n.stop()

    text = asyncio.run(main())
    assert "offered to meters: 0.3.0 (window any time)" in text
    assert "13/13 chunks" in text and "4/5 chunks" in text
    assert "fetching 0.4.0: 1 chunks missing from 1 peers avoiding 10.0.0.9:5683" in text
    assert "not configured" in Console(SimpleNamespace()).handle("updates")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="release_keys"):
        from_dict({"updates": {"enabled": True}})


def test_staged_rollout_offers_canaries_first_and_a_rollback_halts_it(tmp_path: Path) -> None:
    from microgrid.coordinator.updates.offer import device_of
    from microgrid.coordinator.updates.rollout import ReportError, parse_report
    from microgrid.shared import cbor, reading

    meters = {}
    for n in range(4):
        secret = bytes([n + 40]) * 32
        pub = secp256k1.public_key(secret)
        meters[reading.device_id(pub)] = (secret, pub)
    ids = sorted(meters)

    def report(device: str, body: dict) -> bytes:
        secret, pub = meters[device]
        return reading.sign_payload(secret, pub, cbor.dumps(body))

    async def main() -> None:
        n = Node(tmp_path, "staged", MemoryNetwork())
        n.settings.canary = 2
        await n.start()
        n.service.device_key = lambda d: meters[d][1] if d in meters else None
        try:
            await n.service.add_local(made(), IMAGE)
            sfx = n.service.offer_suffix
            assert [sfx(d) for d in ids] == [" fw=0.3.0", " fw=0.3.0", "", ""]
            assert sfx(ids[0]) == " fw=0.3.0"  # a canary keeps its offer
            ok = {"v": "0.3.0", "to": "0.3.0", "ok": True, "why": ""}
            assert n.service._report(report(ids[0], ok)) is None
            assert sfx(ids[2]) == "" and sfx(ids[0]) == ""  # one confirmed; it runs it already
            assert n.service._report(report(ids[1], ok)) is None
            assert sfx(ids[2]) == " fw=0.3.0" and sfx(ids[3]) == " fw=0.3.0"
            back = {"v": "0.2.0", "to": "0.3.0", "ok": False, "why": "no reading acknowledged within 900 s"}
            assert n.service._report(report(ids[2], back)) is None
            assert sfx(ids[3]) == ""
            st = n.service.status()["rollout"]
            assert st["halted"]["0.3.0"] == f"rolled back on {ids[2]}: no reading acknowledged within 900 s"
            # Forged, unregistered and garbled reports are refused.
            forged = reading.sign_payload(meters[ids[3]][0], meters[ids[0]][1], cbor.dumps(ok))
            assert "bad signature" in str(n.service._report(forged))
            stranger = bytes([99]) * 32
            assert "unregistered" in str(n.service._report(
                reading.sign_payload(stranger, secp256k1.public_key(stranger), cbor.dumps(ok))))
            assert n.service._report(b"\x00garbage") is not None
            with pytest.raises(ReportError, match="expected v"):
                parse_report(report(ids[3], {"v": 1}), n.service.device_key)
            from microgrid.coordinator.updates.status import console_text

            text = console_text(n.service.status())
            assert "rollout of 0.3.0 halted" in text and f"meter {ids[0]}: runs 0.3.0" in text
        finally:
            await n.stop()

    asyncio.run(main())
    assert device_of(b"stored 0123456789abcdef/7 t=1700000000") == "0123456789abcdef"
    assert device_of(b"duplicate") is None


def test_a_flood_of_forged_announcements_is_bounded_and_fetches_nothing(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from microgrid.coordinator.updates.peers import ANNOUNCE_KEY
    from microgrid.coordinator.updates.service import MAX_LEARNING

    asked = []

    async def never_answers(ctx: object, endpoint: str, release_id: str) -> bytes:
        asked.append(release_id)
        await asyncio.sleep(3600)
        return b""

    monkeypatch.setattr(transport, "get_manifest", never_answers)

    async def main() -> None:
        net = MemoryNetwork()
        b = await Node(tmp_path, "b", net).start()
        rogue = MemoryOverlay(PrivateKey.from_random(), net)
        await rogue.start()
        silent = free_udp_port()  # nothing answers there
        try:
            for i in range(40):
                rid = hashlib.sha256(bytes([i])).hexdigest()
                body = cbor2.dumps({"id": rid, "version": "9.9.9", "board": "esp32-devkitc", "at": f"127.0.0.1:{silent}"})
                await rogue.put(ANNOUNCE_KEY, body, 600, slot=rid[:16])
            await rogue.put(ANNOUNCE_KEY, b"\xff\xfe", 600, slot="garbage")
            await asyncio.sleep(0.2)
            assert len(b.service._learning) == len(asked) == MAX_LEARNING
            assert not b.service.plans and not b.store.releases
        finally:
            await b.stop()

    asyncio.run(main())


def test_a_bad_chunk_table_from_a_peer_is_refused_without_distrusting_the_release(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = transport.get_table
    served: list[str] = []

    async def lying_once(ctx: object, endpoint: str, release_id: str) -> bytes:
        served.append(endpoint)
        if len(served) == 1:
            return bytes(32 * 13)  # the right length, the wrong hashes
        return await real(ctx, endpoint, release_id)  # type: ignore[arg-type]

    monkeypatch.setattr(transport, "get_table", lying_once)

    async def main() -> None:
        net = MemoryNetwork()
        a, b = [await Node(tmp_path, n, net).start() for n in "ab"]
        try:
            rel = await a.service.add_local(made(), IMAGE)
            await until(lambda: b.service.counts["bad_chunks"] == 1 and not b.service._learning)
            # Not kept, not fetched, but not distrusted either: the manifest is genuine.
            assert rel.release_id() not in b.store.releases and rel.release_id() not in b.service.untrusted
            await a.service._announce(rel)  # the next announcement: learned again, right this time
            await until(lambda: rel.release_id() in b.store.releases
                        and b.store.complete(b.store.releases[rel.release_id()]))
            assert b.store.table(b.store.releases[rel.release_id()]) == release.chunk_table(IMAGE)
        finally:
            for n in (a, b):
                await n.stop()

    asyncio.run(main())
