"""The read guards of issue 15 on the in-memory overlay (same code above
the engine as on OpenDHT): no cut an attacker can fill, publishers asked
for by name, replayed old versions never current again, a membership hook
asked before any signature check."""

from __future__ import annotations

import asyncio
import os

from bitcoinx import PrivateKey

from microgrid.coordinator.overlay import MemoryNetwork, MemoryOverlay, records


class Clock:
    def __init__(self, t: float = 1_750_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def started(net: MemoryNetwork, n: int, **kw) -> list[MemoryOverlay]:  # type: ignore[no-untyped-def]
    out = [MemoryOverlay(PrivateKey.from_random(), net, **kw) for _ in range(n)]
    for o in out:
        await o.start()
    return out


def attackers_sorting_first(n: int) -> list[PrivateKey]:
    return sorted((PrivateKey.from_random() for _ in range(10 * n)),
                  key=lambda k: k.public_key.to_bytes(compressed=True))[:n]


def test_honest_records_survive_ten_thousand_junk_values_and_six_hundred_signed_ones() -> None:
    async def go() -> None:
        clock = Clock()
        net = MemoryNetwork(clock)
        honest = await started(net, 10)
        reader, = await started(net, 1)
        key = "mg/metering/z/1750000000"
        for i, h in enumerate(honest):
            await h.put(key, b"%d" % i, 600)
        # A calm read: the reader learns the publishers.
        assert len(await reader.get(key)) == 10
        attacker = honest[0]
        for k in attackers_sorting_first(10):
            for j in range(60):
                raw = records.sign(k, key, b"x", 1, int(clock()), 600, f"s{j}")
                await attacker.put_raw(key, raw, 600, records.publisher_tag(k.public_key.to_bytes(compressed=True)))
        for j in range(10_000):
            await attacker.put_raw(key, os.urandom(60 + j % 500), 600, os.urandom(4).hex())
        await attacker.put_raw(key, os.urandom(60_000), 600)  # oversized: dropped unread
        got = {r.publisher: r.body for r in await reader.get(key)}
        assert {h.public_key: got.get(h.public_key) for h in honest} == {
            h.public_key: b"%d" % i for i, h in enumerate(honest)}
        assert reader.counts["flooded_reads"] == 1
        # Asked for by name, one publisher's record comes alone.
        only = await reader.get(key, publishers=[honest[3].public_key])
        assert [(r.publisher, r.body) for r in only] == [(honest[3].public_key, b"3")]
        # A reader that never saw the publishers but is told to expect them
        # (a zone's configured members) finds them too.
        fresh, = await started(net, 1)
        fresh.expect(h.public_key for h in honest)
        assert {h.public_key for h in honest} <= {r.publisher for r in await fresh.get(key)}
    asyncio.run(go())


def test_a_replayed_old_version_is_not_taken_as_current_when_the_newest_is_gone() -> None:
    async def go() -> None:
        clock = Clock()
        net = MemoryNetwork(clock)
        pub, reader = await started(net, 2)
        key = "mg/dir/someone"
        await pub.put(key, b"old address", 600)
        old_raw = net.load(key)[0]
        clock.t += 1
        await pub.put(key, b"new address", 600)
        assert [r.body for r in await reader.get(key)] == [b"new address"]
        # The newest version is lost (its storing nodes died) and someone
        # stores the old one again: it verifies, and it is stale.
        net.values[key] = {}
        await reader.put_raw(key, old_raw, 600, records.publisher_tag(pub.public_key))
        assert [r.body for r in await reader.get(key)] == [b"new address"]
        assert [r.body for r in await reader.get(key, publishers=[pub.public_key])] == [b"new address"]
        assert reader.counts["replays"] >= 1
        # Remembered only while it lives.
        clock.t += 601
        assert await reader.get(key) == []
    asyncio.run(go())


def test_membership_hook_is_asked_with_the_publisher_key_before_any_signature_check() -> None:
    async def go() -> None:
        net = MemoryNetwork(Clock())
        member, outsider = await started(net, 2)
        asked: list[bytes] = []

        def members_only(publisher: bytes) -> bool:
            asked.append(publisher)
            return publisher == member.public_key

        reader = MemoryOverlay(PrivateKey.from_random(), net, accept_publisher=members_only)
        await reader.start()
        await member.put("mg/zone/z", b"m", 600, slot="member")
        await outsider.put("mg/zone/z", b"o", 600, slot="member")
        # A record claiming the member's key with a bad signature is refused
        # by the signature check after the hook said yes.
        good = net.load("mg/zone/z")[0]
        await outsider.put_raw("mg/zone/z", good[:-3] + b"\0\0\0", 600)
        assert [r.body for r in await reader.get("mg/zone/z")] == [b"m"]
        assert set(asked) == {member.public_key, outsider.public_key}
        delivered: list[bytes] = []
        reader.listen("mg/zone/z", lambda r: delivered.append(r.body))
        await asyncio.sleep(0.01)
        assert delivered == [b"m"]
    asyncio.run(go())


def test_sharded_keys_hold_a_bounded_share_and_readers_see_every_publisher() -> None:
    from microgrid.coordinator.overlay import keys

    async def go() -> None:
        clock = Clock()
        net = MemoryNetwork(clock)
        pubs = [MemoryOverlay(PrivateKey.from_random(), net, shards=16) for _ in range(400)]
        reader = MemoryOverlay(PrivateKey.from_random(), net, shards=16)
        for o in pubs + [reader]:
            await o.start()
        base = "mg/metering/z/1750000000"
        for i, o in enumerate(pubs):
            await o.put(base, b"%d" % i, 600)
        await pubs[0].put("mg/dir/x", b"unsharded", 600)
        assert base not in net.values and "mg/dir/x" in net.values
        per_key = [len(net.load(k)) for k in keys.all_keys(base, 16)]
        assert sum(per_key) == 400 and max(per_key) <= 45, per_key  # ~25 each
        got = await reader.get(base)
        assert {r.publisher: r.body for r in got} == {o.public_key: b"%d" % i for i, o in enumerate(pubs)}
        # A named publisher is read from its shard only.
        before = reader.counts["get"]
        one = await reader.get(base, publishers=[pubs[7].public_key])
        assert [r.body for r in one] == [b"7"] and reader.counts["get"] == before + 1
        assert one[0].key == keys.key_for(base, pubs[7].public_key, 16)
        seen: list[bytes] = []
        handle = reader.listen(base, lambda r: seen.append(r.body))
        await asyncio.sleep(0.01)
        assert len(seen) == 400
        handle.cancel()
        await pubs[1].put(base, b"later", 600)
        await asyncio.sleep(0.01)
        assert len(seen) == 400
    asyncio.run(go())


def test_a_flooded_shard_asks_only_its_own_publishers_and_floods_teach_no_publishers() -> None:
    from microgrid.coordinator.overlay import keys

    async def go() -> None:
        clock = Clock()
        net = MemoryNetwork(clock)
        pubs = [MemoryOverlay(PrivateKey.from_random(), net, shards=4) for _ in range(40)]
        reader = MemoryOverlay(PrivateKey.from_random(), net, shards=4)
        for o in pubs + [reader]:
            await o.start()
        base = "mg/live/z/1750000000"
        for o in pubs:
            await o.put(base, b"1", 600)
        reader.expect(o.public_key for o in pubs)  # a generator is fine
        shard0 = keys.all_keys(base, 4)[0]
        mine = [o for o in pubs if keys.key_for(base, o.public_key, 4) == shard0]
        attackers = attackers_sorting_first(5)
        for k in attackers:
            await pubs[0].put_raw(shard0, records.sign(k, shard0, b"x", 1, int(clock()), 600), 600)
        for _ in range(500):
            await pubs[0].put_raw(shard0, os.urandom(100), 600)
        before = reader.counts["publisher_reads"]
        got = await reader.get(base)
        assert {o.public_key for o in pubs} <= {r.publisher for r in got}
        assert reader.counts["flooded_reads"] == 1
        assert reader.counts["publisher_reads"] - before <= len(mine)
        assert {k.public_key.to_bytes(compressed=True) for k in attackers} <= {r.publisher for r in got}
        assert not {k.public_key.to_bytes(compressed=True) for k in attackers} & set(reader.known)
        named = await reader.get(base, publishers=(o.public_key for o in pubs[:3]))
        assert {r.publisher for r in named} == {o.public_key for o in pubs[:3]}
    asyncio.run(go())


def test_the_replay_memory_is_bounded_and_drops_expired_records_first() -> None:
    k = PrivateKey.from_random()
    guard = records.ReplayGuard(limit=10)

    def rec(key: str, issued: int, ttl: int) -> records.SignedRecord:
        return records.verify(records.sign(k, key, b"", issued * 1000, issued, ttl), key, issued)

    for i in range(8):
        guard.remember(rec(f"short/{i}", 1000, 5))
    for i in range(8):
        guard.remember(rec(f"long/{i}", 1010, 600))  # the short ones have expired by now
    assert all(guard.latest(f"long/{i}", k.public_key.to_bytes(compressed=True)) for i in range(8))
    assert not any(guard.latest(f"short/{i}", k.public_key.to_bytes(compressed=True)) for i in range(8))
    for i in range(8, 20):
        guard.remember(rec(f"long/{i}", 1010, 600))
    assert guard._count == 10  # the oldest keys forgotten
    assert guard.latest("long/19", k.public_key.to_bytes(compressed=True)) is not None
