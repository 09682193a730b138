"""POST /devices and GET /devices?id=: the installer token guards every
registration; a refused or malformed request registers nothing. The
decision logic runs without a network, then the same over real UDP with
the flash tool's CoAP client."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microgrid.coordinator.app import Coordinator
from microgrid.coordinator.config import Config
from microgrid.coordinator.ingest.devices import DeviceRegistry
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.flash import registration
from microgrid.flash.errors import FlashError
from microgrid.shared import cbor, reading, secp256k1

from ..conftest import free_udp_port

TOKEN = "install-day-7f3a"
PUB = secp256k1.public_key(bytes(range(1, 33)))
DEVICE = reading.device_id(PUB)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ReadingStore]:
    s = ReadingStore(open_database(tmp_path / "c.db"))
    yield s
    s.db.close()


def body(**fields: object) -> bytes:
    doc: dict[str, object] = {"public_key": PUB, "name": "flat 3", "token": TOKEN}
    doc.update(fields)
    return cbor.dumps({k: v for k, v in doc.items() if v is not None})


def test_new_key_is_registered_with_201_and_again_with_204_keeping_the_first(store: ReadingStore) -> None:
    reg = DeviceRegistry(store, TOKEN)
    first = reg.register(body())
    assert first.code == "2.01" and first.body is not None and first.body["device_id"] == DEVICE
    again = reg.register(body(name="renamed"))
    assert again.code == "2.04" and again.body is not None and again.body["name"] == "flat 3"
    assert [d.device_id for d in store.devices()] == [DEVICE]


@pytest.mark.parametrize("token", [None, "", "install-day-7f3b", "install-day-7f3a ", 12345, b"install-day-7f3a"])
def test_missing_or_wrong_token_is_401_and_registers_nothing(store: ReadingStore, token: object) -> None:
    answer = DeviceRegistry(store, TOKEN).register(body(token=token))
    assert answer.code == "4.01", answer
    assert "token" in answer.diagnostic
    assert store.devices() == []


def test_coordinator_without_token_refuses_every_registration_with_403(store: ReadingStore) -> None:
    for offered in ("", TOKEN, None):
        answer = DeviceRegistry(store, "").register(body(token=offered))
        assert answer.code == "4.03" and "installer_token" in answer.diagnostic
    assert store.devices() == []


@pytest.mark.parametrize("payload, words", [
    (b"\xff\x00", "not CBOR"),
    (cbor.dumps([1, 2]), "expected a map"),
    (body(public_key=PUB[:32]), "33 bytes"),
    (body(public_key=PUB.hex()), "33 bytes"),
    (body(public_key=b"\x02" + b"\xff" * 32), "not a secp256k1 point"),
    (body(public_key=b"\x04" + PUB[1:]), "not a secp256k1 point"),
    (body(name="x" * 65), "at most 64"),
    (body(name="a\nb"), "printable"),
    (body(extra=1), "unknown field"),
    (b"\x40" * 600, "at most 512"),
])
def test_malformed_registration_is_400_naming_the_problem(store: ReadingStore, payload: bytes, words: str) -> None:
    answer = DeviceRegistry(store, TOKEN).register(payload)
    assert answer.code == "4.00" and words in answer.diagnostic, answer
    assert store.devices() == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_register_and_never_raise(store: ReadingStore, payload: bytes) -> None:
    answer = DeviceRegistry(store, TOKEN).register(payload)
    assert answer.code.startswith("4.")
    assert store.devices() == []


def test_lookup_by_id(store: ReadingStore) -> None:
    reg = DeviceRegistry(store, TOKEN)
    assert reg.lookup([f"id={DEVICE}"]).code == "4.04"
    reg.register(body())
    found = reg.lookup([f"id={DEVICE}"])
    assert found.code == "2.05" and found.body is not None and found.body["public_key"] == PUB
    for bad in ([], ["id=XYZ"], [f"id={DEVICE}", f"id={DEVICE}"], [f"id={DEVICE.upper()}"]):
        assert reg.lookup(bad).code == "4.00"


# -- over UDP, with the flash tool's client ---------------------------------


@contextlib.contextmanager
def coordinator(tmp_path: Path, token: str = TOKEN) -> Iterator[tuple[Coordinator, int]]:
    """A coordinator serving CoAP on 127.0.0.1 in a thread's event loop."""
    import threading

    config = Config()
    config.coap.port = free_udp_port()
    config.store.path = str(tmp_path / "served.db")
    config.console.socket = str(tmp_path / "c.sock")
    config.ingest.installer_token = token
    loop = asyncio.new_event_loop()
    holder: dict[str, Coordinator] = {}

    async def start() -> None:
        holder["c"] = Coordinator(config)
        await holder["c"].start()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield holder["c"], config.coap.port
    finally:
        asyncio.run_coroutine_threadsafe(holder["c"].stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_flash_client_registers_over_udp_and_finds_the_registration(tmp_path: Path) -> None:
    with coordinator(tmp_path) as (coord, port):
        assert registration.lookup("127.0.0.1", port, DEVICE, token=TOKEN) is None
        first = registration.register("127.0.0.1", port, PUB, "flat 3", TOKEN)
        assert first.created and first.device_id == DEVICE
        again = registration.register("127.0.0.1", port, PUB, "flat 3", TOKEN)
        assert not again.created and again.registered_at == first.registered_at
        found = registration.lookup("127.0.0.1", port, DEVICE, token=TOKEN)
        assert found is not None and found.public_key == PUB
        # Without the installer token (or with a wrong one) nothing is shown.
        for token in (None, "guess"):
            with pytest.raises(FlashError) as e:
                registration.lookup("127.0.0.1", port, DEVICE, token=token)
            assert "credentials" in e.value.cause and "token" in e.value.fix


def test_wrong_token_over_udp_names_the_step_cause_and_fix(tmp_path: Path) -> None:
    with coordinator(tmp_path) as (coord, port):
        with pytest.raises(FlashError) as e:
            registration.register("127.0.0.1", port, PUB, "flat 3", "guess")
        assert e.value.step == "register" and "token" in e.value.cause and "installer_token" in e.value.fix
        assert coord.store.devices() == []


def test_unreachable_coordinator_is_reported_within_the_timeout() -> None:
    port = free_udp_port()  # nothing listens there
    with pytest.raises(FlashError) as e:
        registration.register("127.0.0.1", port, PUB, "m", TOKEN, timeout=1.5)
    assert "unreachable" in e.value.cause and f"127.0.0.1:{port}" in e.value.cause
    assert "--coordinator" in e.value.fix
