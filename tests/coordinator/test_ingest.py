"""POST /readings over real UDP on 127.0.0.1: accepted readings are stored
once; every kind of bad input gets an error code, stores nothing, and the
server keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import AsyncIterator

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption
from bitcoinx import PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microgrid.coordinator.app import Coordinator
from microgrid.coordinator.config import Config
from microgrid.coordinator.ingest.access import TOKEN_OPTION, token_hash
from microgrid.coordinator.ingest.readings import ReadingIngest
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.shared import cbor, reading, secp256k1

from ..conftest import free_udp_port

SECRET = bytes(range(1, 33))
PUB = secp256k1.public_key(SECRET)
T0 = 1_700_000_000
API_TOKEN = "test-application-token"


def with_token(request: aiocoap.Message, token: str = API_TOKEN) -> aiocoap.Message:
    """The application credential of ingest/access.py."""
    request.opt.add_option(OpaqueOption(TOKEN_OPTION, token.encode()))
    return request


def make(seq: int, secret: bytes = SECRET, pub: bytes = PUB, **kw: object) -> bytes:
    args = dict(t=T0 + seq, import_wh=100 + seq, export_wh=0, power_w=500, voltage_v=230.0)
    args.update(kw)
    return reading.build(secret, pub, seq, **args)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[Coordinator, aiocoap.Context, str]]:
    config = Config()
    config.coap.port = free_udp_port()
    config.store.path = str(tmp_path / "c.db")
    config.api.token_sha256 = [token_hash(API_TOKEN)]
    coordinator = Coordinator(config)
    coordinator.store.register_device(PUB, "m1")
    await coordinator.start()
    client = await aiocoap.Context.create_client_context()
    try:
        yield coordinator, client, f"coap://127.0.0.1:{config.coap.port}"
    finally:
        await client.shutdown()
        await coordinator.stop()


async def post(client: aiocoap.Context, uri: str, payload: bytes, content_format: int | None = 18) -> aiocoap.Message:
    req = aiocoap.Message(code=Code.POST, uri=uri + "/readings", payload=payload)
    if content_format is not None:
        req.opt.content_format = content_format
    return await asyncio.wait_for(client.request(req).response, 10)


def test_a_valid_reading_is_stored_once_with_its_exact_bytes(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(tmp_path) as (coord, client, uri):
            msg = make(1)
            resp = await post(client, uri, msg)
            assert resp.code == Code.CREATED
            again = await post(client, uri, msg)
            assert again.code == Code.CONFLICT and again.payload.startswith(b"duplicate")
            rows = list(coord.store.readings())
            assert len(rows) == 1 and rows[0]["cose"] == msg and rows[0]["seq"] == 1
            assert rows[0]["import_wh"] == 101 and rows[0]["source"] == "coap"

    asyncio.run(go())


def test_bad_readings_get_error_codes_and_nothing_is_stored(tmp_path: Path) -> None:
    other = PrivateKey.from_random()
    other_pub = other.public_key.to_bytes(compressed=True)

    good = make(5)
    parsed = reading.parse(good)
    # Same structure, one value changed after signing.
    tampered_payload = parsed.message.payload.replace(b"\x18\x69", b"\x18\x6a")
    assert tampered_payload != parsed.message.payload
    tampered = cose_with(parsed.message.protected, tampered_payload, parsed.message.signature)
    # Signed by another key but claiming the registered device's kid.
    wrong_key = cose_with(parsed.message.protected, parsed.message.payload,
                          secp256k1.sign(other.to_bytes(), parsed.message.to_be_signed()))
    high_s = cose_with(parsed.message.protected, parsed.message.payload,
                       parsed.message.signature[:32]
                       + (secp256k1.N - int.from_bytes(parsed.message.signature[32:], "big")).to_bytes(32, "big"))
    cases = [
        ("tampered payload", tampered, Code.FORBIDDEN, b"does not verify"),
        ("wrong key", wrong_key, Code.FORBIDDEN, b"does not verify"),
        ("high S", high_s, Code.FORBIDDEN, b"high S"),
        ("unknown device", make(1, other.to_bytes(), other_pub), Code.UNAUTHORIZED, b"unknown device"),
        ("truncated", good[:-10], Code.BAD_REQUEST, b"malformed"),
        ("empty", b"", Code.BAD_REQUEST, b"malformed"),
        ("not cbor", b"\xff\x00hello", Code.BAD_REQUEST, b"malformed"),
        ("from the future", make(6, t=4_000_000_000), Code.BAD_REQUEST, b"future"),
        ("oversized", b"\x00" * 1100, Code.REQUEST_ENTITY_TOO_LARGE, b"exceeds"),
    ]

    async def go() -> None:
        async with served(tmp_path) as (coord, client, uri):
            for name, payload, code, why in cases:
                resp = await post(client, uri, payload)
                assert resp.code == code, (name, resp.code, resp.payload)
                assert why in resp.payload, (name, resp.payload)
            wrong_cf = await post(client, uri, good, content_format=50)
            assert wrong_cf.code == Code.UNSUPPORTED_CONTENT_FORMAT
            assert coord.store.count() == 0
            # Still serving: the genuine reading goes in afterwards.
            assert (await post(client, uri, good)).code == Code.CREATED
            assert coord.store.count() == 1
            assert coord.ingest.counts["rejected"] == len(cases)

    asyncio.run(go())


def cose_with(protected: bytes, payload: bytes, signature: bytes) -> bytes:
    return cbor.dumps(cbor.Tag(18, [protected, {}, payload, signature]))


def test_replayed_and_stale_sequence_numbers_are_refused(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(tmp_path) as (coord, client, uri):
            for seq in (1, 2, 3):
                assert (await post(client, uri, make(seq))).code == Code.CREATED
            # A new message reusing an old sequence number.
            stale = make(2, import_wh=999)
            resp = await post(client, uri, stale)
            assert resp.code == Code.CONFLICT and resp.payload.startswith(b"stale")
            # The exact earlier message again (a replay of captured bytes).
            replay = await post(client, uri, make(1))
            assert replay.code == Code.CONFLICT and replay.payload.startswith(b"duplicate")
            assert [r["seq"] for r in coord.store.readings()] == [1, 2, 3]
            assert [r["import_wh"] for r in coord.store.readings()] == [101, 102, 103]
            # Gaps are fine (a meter skips ahead after a reboot).
            assert (await post(client, uri, make(20))).code == Code.CREATED

    asyncio.run(go())


def test_a_stale_answer_says_where_the_coordinator_stands_only_to_the_key_holder(tmp_path: Path) -> None:
    """A meter that lost its state learns the last stored seq and counters
    from the 4.09 (edge/resync.py); a message that does not verify learns
    nothing, and the stale reading is still not stored."""
    other = bytes(range(2, 34))

    async def go() -> None:
        async with served(tmp_path) as (coord, client, uri):
            for seq in (5, 6, 9):
                assert (await post(client, uri, make(seq, export_wh=seq * 2))).code == Code.CREATED
            resp = await post(client, uri, make(1, import_wh=3))
            assert resp.code == Code.CONFLICT
            text = resp.payload.decode()
            assert text.startswith("stale: seq 1 ") and text.endswith("; last=9 import=109 export=18"), text
            # Signed by another key under this meter's kid: 4.03, no figures.
            forged = reading.sign_payload(other, PUB, reading.encode_payload(reading.device_id(PUB), 1, T0, 3, 0, 1, 230))
            resp = await post(client, uri, forged)
            assert resp.code == Code.FORBIDDEN and b"last=" not in resp.payload
            # The exact earlier message is still a duplicate, with no figures.
            resp = await post(client, uri, make(6, export_wh=12))
            assert resp.code == Code.CONFLICT and resp.payload == b"duplicate: seq 6 already stored"
            assert [r["seq"] for r in coord.store.readings()] == [5, 6, 9]

    asyncio.run(go())


def test_last_sequence_survives_a_restart(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(tmp_path) as (coord, client, uri):
            assert (await post(client, uri, make(7))).code == Code.CREATED
        async with served(tmp_path) as (coord, client, uri):
            resp = await post(client, uri, make(6))
            assert resp.code == Code.CONFLICT
            assert (await post(client, uri, make(8))).code == Code.CREATED

    asyncio.run(go())


def test_health_resource_reports_counts(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(tmp_path) as (coord, client, uri):
            await post(client, uri, make(1))
            req = with_token(aiocoap.Message(code=Code.GET, uri=uri + "/health"))
            resp = await asyncio.wait_for(client.request(req).response, 10)
            body = json.loads(resp.payload)
            assert body["status"] == "ok" and body["readings"] == 1 and body["devices"] == 1
            # Without credentials: alive, nothing more.
            resp = await asyncio.wait_for(client.request(aiocoap.Message(code=Code.GET, uri=uri + "/health")).response, 10)
            assert resp.code == Code.CONTENT and json.loads(resp.payload) == {"status": "ok"}

    asyncio.run(go())


@pytest.fixture(scope="module")
def ingest_core(tmp_path_factory: pytest.TempPathFactory) -> ReadingIngest:
    store = ReadingStore(open_database(tmp_path_factory.mktemp("fuzz") / "f.db"))
    store.register_device(PUB)
    return ReadingIngest(store, clock=lambda: T0 + 10**6)


@given(st.binary(max_size=400))
@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_bytes_are_refused_by_the_ingest_core(ingest_core: ReadingIngest, data: bytes) -> None:
    outcome = ingest_core.accept(data)
    assert outcome.code.startswith("4.") and not outcome.stored
    assert ingest_core.store.count() == 0


def test_random_datagrams_over_udp_leave_the_server_serving(tmp_path: Path) -> None:
    import random

    rng = random.Random(3)
    blobs = [rng.randbytes(rng.randrange(0, 200)) for _ in range(60)]

    async def go() -> None:
        async with served(tmp_path) as (coord, client, uri):
            for blob in blobs:
                resp = await post(client, uri, blob)
                assert resp.code.is_successful() is False and 128 <= int(resp.code) < 160
            # Raw garbage that is not even CoAP, straight at the socket.
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=("127.0.0.1", coord.config.coap.port))
            for blob in blobs:
                transport.sendto(blob)
            transport.close()
            assert coord.store.count() == 0
            assert (await post(client, uri, make(1))).code == Code.CREATED

    asyncio.run(go())


def test_a_batch_is_stored_whole_once_and_a_repeat_is_a_duplicate(tmp_path: Path) -> None:
    batch = [(s, T0 + s, 100 + s, 0, 500, 230.0, None) for s in (4, 5, 6)]
    message = reading.build_batch(SECRET, PUB, batch)

    async def go() -> None:
        async with served(tmp_path) as (coord, client, uri):
            resp = await post(client, uri, message)
            assert resp.code == Code.CREATED and b"/4..6" in resp.payload
            again = await post(client, uri, message)
            assert again.code == Code.CONFLICT and again.payload.startswith(b"duplicate")
            rows = list(coord.store.readings())
            assert [r["seq"] for r in rows] == [4, 5, 6] and all(r["cose"] == message for r in rows)
            # A batch overlapping what is stored is refused whole.
            overlap = reading.build_batch(SECRET, PUB, [(6, T0 + 6, 999, 0, 0, 230.0, None),
                                                        (7, T0 + 7, 1000, 0, 0, 230.0, None)])
            assert (await post(client, uri, overlap)).code == Code.CONFLICT
            assert coord.store.count() == 3

    asyncio.run(go())
