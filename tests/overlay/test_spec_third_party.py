"""A third party reads the overlay from coordinator/overlay/SPEC.md alone:
a raw OpenDHT client (the `opendht` binding), hashlib, cbor2 and the
secp256k1 ECDSA check below, written from the spec, find and verify every
record the coordinators publish. Only the publishing side uses the
project's code; nothing below `ThirdParty` imports it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import opendht as dht
from bitcoinx import PrivateKey

from .conftest import REPO_ROOT, start_nodes, stop_all

SPEC = REPO_ROOT / "coordinator" / "overlay" / "SPEC.md"

# -- the third party's code, from SPEC.md -------------------------------------

NETWORK_ID = 0x4D475244
P = 2**256 - 2**32 - 977
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
G = (0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
     0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8)
ORDER_CONTEXT = b"microgrid/market/order/v1\x00"


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0] and (a[1] + b[1]) % P == 0:
        return None
    if a == b:
        m = 3 * a[0] * a[0] * pow(2 * a[1], -1, P) % P
    else:
        m = (b[1] - a[1]) * pow(b[0] - a[0], -1, P) % P
    x = (m * m - a[0] - b[0]) % P
    return (x, (m * (a[0] - x) - a[1]) % P)


def _mul(k: int, pt: Any) -> Any:
    out = None
    while k:
        if k & 1:
            out = _add(out, pt)
        pt = _add(pt, pt)
        k >>= 1
    return out


def _point(pub: bytes) -> Any:
    assert len(pub) == 33 and pub[0] in (2, 3)
    x = int.from_bytes(pub[1:], "big")
    y = pow((x ** 3 + 7) % P, (P + 1) // 4, P)
    if y % 2 != pub[0] - 2:
        y = P - y
    assert (y * y - x ** 3 - 7) % P == 0
    return (x, y)


def ecdsa_ok(pub: bytes, message: bytes, sig: bytes) -> bool:
    """secp256k1 ECDSA over SHA-256(message), sig = r || s, low S."""
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if len(sig) != 64 or not (0 < r < N and 0 < s <= N // 2):
        return False
    z = int.from_bytes(hashlib.sha256(message).digest(), "big")
    w = pow(s, -1, N)
    pt = _add(_mul(z * w % N, G), _mul(r * w % N, _point(pub)))
    return pt is not None and pt[0] % N == r


def verify_record(raw: bytes, key_name: str, now: float) -> dict[int, Any]:
    """SPEC.md section 3; returns the payload map or raises."""
    msg = cbor2.loads(raw)
    assert isinstance(msg, cbor2.CBORTag) and msg.tag == 18
    protected, unprotected, payload, sig = msg.value
    headers = cbor2.loads(protected)
    p = cbor2.loads(payload)
    assert headers[1] == -47
    assert headers[4] == hashlib.sha256(p[6]).digest()[:8]
    assert ecdsa_ok(p[6], cbor2.dumps(["Signature1", protected, b"", payload]), sig), "bad signature"
    assert p[1] == key_name, "copied record"
    assert p[5] > now and p[4] <= now + 300 and 1 <= p[5] - p[4] <= 86400
    return dict(p)


def tag(pub: bytes) -> str:
    return "mg1:" + hashlib.sha256(pub).digest()[:8].hex()


class ThirdParty:
    """A plain OpenDHT node on the microgrid network."""

    def __init__(self, bootstrap_port: int) -> None:
        config = dht.DhtConfig()
        config.setNetwork(NETWORK_ID)
        config.setPeerDiscovery(False, False)
        config.setRateLimit(-1, -1)
        self.runner = dht.DhtRunner()
        self.runner.run(port=0, ipv4="127.0.0.1", ipv6="::1", config=config)
        self.runner.bootstrap("127.0.0.1", str(bootstrap_port))

    def get(self, name: str, where: Any = None) -> list[bytes]:
        infohash = dht.InfoHash.get(name)
        assert str(infohash) == hashlib.sha1(name.encode()).hexdigest()
        found: list[bytes] = []
        done = threading.Event()

        def on_value(v: Any) -> bool:
            found.append(bytes(v.data))
            return True

        if where is None:
            self.runner.get(infohash, on_value, lambda ok, nodes: done.set())
        else:
            self.runner.get(infohash, on_value, lambda ok, nodes: done.set(), where=where)
        done.wait(10)
        return found

    def records(self, name: str, where: Any = None) -> dict[tuple[bytes, str], dict[int, Any]]:
        """Newest valid record per (publisher, slot)."""
        out: dict[tuple[bytes, str], dict[int, Any]] = {}
        for raw in self.get(name, where):
            try:
                p = verify_record(raw, name, time.time())
            except Exception:
                continue
            k = (p[6], p[2])
            if k not in out or out[k][3] < p[3]:
                out[k] = p
        return out

    def close(self) -> None:
        # join() before the shutdown callback fired can hang (engine.py)
        down = threading.Event()
        self.runner.shutdown(down.set)
        if down.wait(5):
            time.sleep(0.05)
            self.runner.join()


# -- the test --------------------------------------------------------------------


def test_the_worked_example_in_the_spec_verifies_with_the_spec_alone() -> None:
    text = SPEC.read_text()
    block = text.split("<!-- worked-example -->", 1)[1].split("```")[1]
    raw = bytes.fromhex("".join(block.split()))
    pub = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
    name = "mg/dir/" + pub.hex()
    assert name in text and hashlib.sha1(name.encode()).hexdigest() in text and tag(pub) in text
    p = verify_record(raw, name, 1_750_000_100)
    assert (p[2], p[3], p[4], p[5], p[6]) == ("", 1_750_000_000_000, 1_750_000_000, 1_750_021_600, pub)
    assert json.loads(p[7]) == {"coap": "coap://192.0.2.7:5683/channel", "zone": "feeder-3"}
    # Any change breaks it; it is not readable under another key.
    for i in (20, 100, len(raw) - 5):
        bad = raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1:]
        try:
            verify_record(bad, name, 1_750_000_100)
        except Exception:
            continue
        raise AssertionError(f"a change at byte {i} verified")
    try:
        verify_record(raw, "mg/dir/other", 1_750_000_100)
        raise AssertionError("read under another key")
    except AssertionError as e:
        assert "copied" in str(e)
    # The spec's key table names the keys the code uses.
    for name in ("mg/dir/<pubhex>", "mg/zone/<zone>", "mg/market/<zone>/<start>",
                 "mg/market-result/<zone>/<start>", "mg/metering/<zone>/<start>", "mg/live/<zone>/<start>",
                 "mg/round/<zone>/<start>"):
        assert f"`{name}`" in text


def test_a_raw_opendht_client_finds_and_verifies_every_record_from_the_spec() -> None:
    from microgrid.coordinator.market import book as bk
    from microgrid.coordinator.market.clearing import clear_interval
    from microgrid.coordinator.market import rounds
    from microgrid.coordinator.market.orders import BUY, SELL, make_order
    from microgrid.coordinator.overlay.directory import Directory
    from microgrid.coordinator.trading.exchange import LIVE_PREFIX, METERING_PREFIX

    async def go() -> None:
        shards = 4
        nodes = await start_nodes(4, shards=shards)
        zone = "feeder-3"
        start = (int(time.time()) // 900 + 96) * 900
        third = ThirdParty(nodes[0].port)
        try:
            keys = [PrivateKey.from_random() for _ in nodes]
            orders = [make_order(keys[i], BUY if i == 0 else SELL, zone, start, 400 + i, 120, start + 900, 7,
                                 int(time.time())) for i in range(len(nodes))]
            cleared = clear_interval(orders, zone, start)
            for i, n in enumerate(nodes):
                await Directory(n, {"coap": f"coap://127.0.0.1:{5700 + i}/channel", "zone": zone}).publish()
                assert METERING_PREFIX + zone == f"mg/metering/{zone}" and LIVE_PREFIX + zone == f"mg/live/{zone}"
                await n.put(f"{METERING_PREFIX}{zone}/{start}", json.dumps({"export_wh": i, "import_wh": 9}).encode(), 600)
                await n.put(f"{LIVE_PREFIX}{zone}/{start}", json.dumps({"export_wh": i, "import_wh": 1}).encode(), 600)
                await bk.publish_order(n, orders[i], time.time())
                await bk.publish_result(n, n.publisher_id, cleared)
                # round records: the meter total for `start` and an order for two intervals on
                later = make_order(n.signing_key, SELL, zone, start + 1800, 300 + i, 90, start + 2700, 8, int(time.time()))
                await rounds.publish_round(n, zone, rounds.make_round(start, 900, (i, 9), [later]), 600)
            totals = {n.public_key: (i, 9) for i, n in enumerate(nodes)}
            await rounds.publish_settled(nodes[0], zone, rounds.SettledRound(start, 900, len(nodes),
                                                                             rounds.meters_hash(totals)), 600)
            pubs = {n.public_key for n in nodes}
            await asyncio.sleep(0.2)

            # From here on: the spec's names and formats only.
            def read(name: str) -> dict[tuple[bytes, str], dict[int, Any]]:
                if not name.startswith(("mg/market/", "mg/market-result/", "mg/metering/", "mg/live/", "mg/round/")):
                    return third.records(name)
                out: dict[tuple[bytes, str], dict[int, Any]] = {}
                for shard in range(shards):
                    got = third.records(f"{name}/{shard}")
                    for (pub, _slot), p in got.items():
                        kid = hashlib.sha256(pub).digest()[:8]
                        assert (kid[0] * 256 + kid[1]) % shards == shard
                    out.update(got)
                return out
            loop = asyncio.get_running_loop()
            for pub in pubs:
                name = f"mg/dir/{pub.hex()}"
                got = await loop.run_in_executor(None, read, name)
                assert {k[0] for k in got} == {pub} and json.loads(got[(pub, "")][7])["zone"] == zone
                where = dht.Where()
                where.userType(tag(pub))
                tagged = await loop.run_in_executor(None, third.records, name, where)
                assert set(tagged) == {(pub, "")}
            members = await loop.run_in_executor(None, read, f"mg/zone/{zone}")
            assert {k for k in members} == {(p, "member") for p in pubs}
            for prefix, imports in (("mg/metering", 9), ("mg/live", 1)):
                got = await loop.run_in_executor(None, read, f"{prefix}/{zone}/{start}")
                assert {k[0] for k in got} == pubs
                assert all(json.loads(p[7])["import_wh"] == imports for p in got.values())
            book = await loop.run_in_executor(None, read, f"mg/market/{zone}/{start}")
            assert len(book) == len(nodes)
            hashes = set()
            for (pub, slot), p in book.items():
                body = p[7]
                version, order, sig = cbor2.loads(body)
                terms = cbor2.loads(order)
                assert version == 1 and terms[2] == zone and terms[3] == start
                assert ecdsa_ok(terms[8], ORDER_CONTEXT + order, sig), "order signature"
                assert slot == f"{terms[8].hex()[:16]}:{terms[9]}"
                hashes.add(hashlib.sha256(body).digest())
            assert hashes == {o.hash for o in orders}
            results = await loop.run_in_executor(None, read, f"mg/market-result/{zone}/{start}")
            assert {k for k in results} == {(p, "result:900") for p in pubs}
            assert {cbor2.loads(p[7])["hash"] for p in results.values()} == {cleared.hash}
            got = await loop.run_in_executor(None, read, f"mg/round/{zone}/{start}")
            assert set(got) == {(p, "") for p in pubs} | {(nodes[0].public_key, "settled")}
            seen = []
            for (pub, slot), p in got.items():
                m = cbor2.loads(p[7])
                assert cbor2.dumps(m, canonical=True) == p[7]
                if slot == "settled":
                    continue
                assert (m["v"], m["start"], m["len"]) == (1, start, 900) and m["meter"][1] == 9
                seen.append([pub, m["meter"][0], m["meter"][1]])
                (order_body,) = m["orders"]
                version, order, sig = cbor2.loads(order_body)
                terms = cbor2.loads(order)
                assert terms[8] == pub and terms[3] == start + 1800  # its own order, two intervals on
                assert ecdsa_ok(pub, ORDER_CONTEXT + order, sig), "order signature in a round record"
            settled = cbor2.loads(got[(nodes[0].public_key, "settled")][7])
            assert settled["meters"] == len(nodes)
            assert settled["hash"] == hashlib.sha256(cbor2.dumps(sorted(seen), canonical=True)).digest()
        finally:
            third.close()
            await stop_all(nodes)
    asyncio.run(go())


def test_a_third_party_follows_a_district_through_its_shards_from_the_spec() -> None:
    """SPEC.md section 7 alone: the zones' offers under their shard's key,
    each shard's leftovers and the district's slices under the district's
    key, the zones' slices under their shard's key; every hash that links
    the levels checks out, and energy sold equals energy bought."""
    from microgrid.coordinator.market.district import ZoneOffer, clear_district
    from microgrid.coordinator.market.district_link import (
        publish_offer, publish_results, publish_zone_lots, read_result)
    from microgrid.coordinator.market.shards import leftovers, levels_hash, shard_name, shard_offer, zone_lots

    async def go() -> None:
        nodes = await start_nodes(6)
        district, shards = "d-1", 2
        start = (int(time.time()) // 900 + 8) * 900
        third = ThirdParty(nodes[0].port)
        zones = ["feeder-1", "feeder-2", "feeder-3", "feeder-4"]
        k_of = {z: int.from_bytes(hashlib.sha256(z.encode()).digest()[:2], "big") % shards for z in zones}
        assert set(k_of.values()) == {0, 1}
        try:
            # Publishing side (the project's code): a coordinator per zone,
            # then one clearer per shard and one for the district.
            pubs, shard_clearer, top = nodes[:4], {0: nodes[4], 1: nodes[5]}, nodes[0]
            offers = {z: ZoneOffer(z, start, 900, hashlib.sha256(z.encode()).digest(),
                                   ((30 + 10 * i, 1000),) if i % 2 else (), ((150 - 10 * i, 800),) if not i % 2 else (),
                                   2**40, 2**40) for i, z in enumerate(zones)}
            for z, n in zip(zones, pubs):
                assert await publish_offer(n, district, offers[z], shards)
            results = {}
            for k, n in shard_clearer.items():
                mine = {z: o for z, o in offers.items() if k_of[z] == k}
                res = clear_district(mine.values(), shard_name(k), start, 900)
                results[k] = (mine, res)
                assert await publish_offer(n, district, shard_offer(k, leftovers(mine.values(), res), res), 1)
            up = [shard_offer(k, leftovers(m.values(), r), r) for k, (m, r) in results.items()]
            assert await publish_results(top, district, clear_district(up, district, start, 900),
                                         [o.zone for o in up], 1)
            for k, n in shard_clearer.items():
                mine, res = results[k]
                share = await read_result(n, district, start, shard_name(k), [top.public_key], 1)
                assert await publish_zone_lots(n, district, start, 900,
                                               levels_hash(res, None if share is None else share[0]),
                                               zone_lots(mine, res, None if share is None else share[1]), shards)
            await asyncio.sleep(0.2)

            # From here on: the spec's names and formats only.
            loop = asyncio.get_running_loop()
            base = f"mg/district/{district}/{start}"
            top_recs = await loop.run_in_executor(None, third.records, base)
            district_slice = cbor2.loads(top_recs[(top.public_key, "result")][7])
            assert cbor2.dumps(district_slice, canonical=True) == top_recs[(top.public_key, "result")][7]
            assert any(e[1] or e[2] for e in district_slice["zones"].values())  # shards traded with each other
            sold = bought = 0
            for k, clearer in shard_clearer.items():
                shard = f"shard.{k}"
                offer = cbor2.loads(top_recs[(clearer.public_key, f"zone:{shard}")][7])
                assert offer["zone"] == shard and offer["start"] == start and offer["exp"] == 2**40
                entry = district_slice["zones"].get(shard)
                if entry is not None:
                    assert entry[0] == offer["book"][:8]  # the district cleared this shard's offer
                want_hash = hashlib.sha256(offer["book"] + (district_slice["hash"] if entry else b"")).digest()
                recs = await loop.run_in_executor(None, third.records, f"{base}/{k}")
                zone_slice = cbor2.loads(recs[(clearer.public_key, "result")][7])
                assert zone_slice["hash"] == want_hash
                for z in zones:
                    if k_of[z] != k:
                        continue
                    zo = cbor2.loads(recs[(pubs[zones.index(z)].public_key, f"zone:{z}")][7])
                    assert zo["zone"] == z and zo["v"] == 1
                    prefix, s_lots, b_lots = zone_slice["zones"][z]
                    assert prefix == zo["book"][:8]
                    assert all(p >= zo["asks"][0][0] for p, _ in s_lots) if s_lots else True
                    sold += sum(p * w for p, w in s_lots)
                    bought += sum(p * w for p, w in b_lots)
            assert sold == bought > 0  # every Wh sold is bought, at the same price
        finally:
            third.close()
            await stop_all(nodes)
    asyncio.run(go())
