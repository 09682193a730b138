"""The API asks who you are (ingest/access.py, ingest/guard.py): over real
UDP on 127.0.0.1, every resource but the open ones (readings, liveness,
registration, channels, discovery) answers 4.01 without credentials; an
application token works over loopback; a token over plain CoAP from the
network is refused even when right; an OSCORE-style authenticated claim
works once its check is registered."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.transports.udp6 import UDP6EndpointAddress

from microgrid.coordinator.ingest.access import Access, new_token, token_hash

from .test_ingest import API_TOKEN, PUB, make, post, served, with_token

PROTECTED = ["/api/meters", "/api/meters/latest?id=d136e9438ef1b044", "/api/market", "/api/channels",
             "/devices?id=d136e9438ef1b044"]


def test_without_credentials_only_the_open_doors_answer(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(tmp_path) as (coord, client, uri):
            assert (await post(client, uri, make(1))).code == Code.CREATED  # readings stay open (signed)
            for path in PROTECTED:
                r = await asyncio.wait_for(client.request(aiocoap.Message(code=Code.GET, uri=uri + path)).response, 10)
                assert r.code == Code.UNAUTHORIZED, (path, r)
                assert b"credentials required" in r.payload
                assert b"m1" not in r.payload and PUB.hex().encode() not in r.payload
            wrong = with_token(aiocoap.Message(code=Code.GET, uri=uri + "/api/meters"), "not-the-token")
            r = await asyncio.wait_for(client.request(wrong).response, 10)
            assert r.code == Code.UNAUTHORIZED and r.payload == b"token not accepted"
            # A method not listed open on an open path needs credentials too.
            r = await asyncio.wait_for(client.request(aiocoap.Message(code=Code.DELETE, uri=uri + "/readings")).response, 10)
            assert r.code == Code.UNAUTHORIZED
            health = await asyncio.wait_for(client.request(aiocoap.Message(code=Code.GET, uri=uri + "/health")).response, 10)
            assert json.loads(health.payload) == {"status": "ok"}
            wkc = await asyncio.wait_for(client.request(aiocoap.Message(code=Code.GET, uri=uri + "/.well-known/core")).response, 10)
            assert wkc.code == Code.CONTENT
            # With the token over loopback every one answers.
            for path in PROTECTED:
                r = await asyncio.wait_for(client.request(with_token(aiocoap.Message(code=Code.GET, uri=uri + path))).response, 10)
                assert r.code.is_successful(), (path, r)
            r = await asyncio.wait_for(client.request(with_token(aiocoap.Message(code=Code.GET, uri=uri + "/api/meters"))).response, 10)
            assert json.loads(r.payload)[0]["name"] == "m1"
            assert coord.access.counts["refused"] >= len(PROTECTED) + 1

    asyncio.run(go())


class _Request:
    """The two things Access.decide reads of a request: its remote and options."""

    def __init__(self, remote: Any, token: str | None = None) -> None:
        self.remote = remote
        msg = aiocoap.Message(code=Code.GET)
        if token is not None:
            with_token(msg, token)
        self.opt = msg.opt


class _Interface:
    pass


class _Authenticated:
    def __init__(self, claims: list[Any]) -> None:
        self.authenticated_claims = claims
        self.scheme = "coap"


def test_a_token_over_plain_coap_from_the_network_is_refused_even_when_right() -> None:
    access = Access([token_hash(API_TOKEN)])
    interface = _Interface()  # the remote only keeps a weak reference to its socket's interface
    lan = UDP6EndpointAddress(("::ffff:192.0.2.7", 5683, 0, 0), interface)
    loop4 = UDP6EndpointAddress(("::ffff:127.0.0.1", 5683, 0, 0), interface)
    loop6 = UDP6EndpointAddress(("::1", 5683, 0, 0), interface)
    refused = access.decide(_Request(lan, API_TOKEN))
    assert not refused.allowed and "plain CoAP" in refused.why and access.counts["token_in_clear"] == 1
    assert access.decide(_Request(loop4, API_TOKEN)).allowed
    assert access.decide(_Request(loop6, API_TOKEN)).allowed
    assert not access.decide(_Request(loop4, API_TOKEN + "x")).allowed
    assert not access.decide(_Request(loop4)).allowed


def test_an_authenticated_claim_is_enough_once_its_check_is_registered() -> None:
    """The hook the OSCORE set-up uses: aiocoap gives an OSCORE request's
    remote the security context as an authenticated claim."""
    access = Access()
    app_context, meter_context = object(), object()
    assert not access.decide(_Request(_Authenticated([app_context]))).allowed
    access.add_claim_check(lambda claim: claim is app_context)
    assert access.decide(_Request(_Authenticated([app_context]))).allowed
    assert not access.decide(_Request(_Authenticated([meter_context]))).allowed
    # Over such a context a token counts as protected too.
    access2 = Access([token_hash(API_TOKEN)])
    assert access2.decide(_Request(_Authenticated([meter_context]), API_TOKEN)).allowed


def test_new_tokens_are_random_and_only_their_hash_is_configured() -> None:
    (a, ha), (b, hb) = new_token(), new_token()
    assert a != b and len(a) >= 43 and ha == token_hash(a) and len(ha) == 64 and a not in ha


def test_api_token_command_prints_a_token_and_the_hash_to_configure(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    from microgrid.coordinator.config import ConfigError, from_dict

    out = subprocess.run([sys.executable, "-m", "microgrid.cli", "coordinator", "api-token"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    token = re.search(r"shown once\): (\S+)", out).group(1)  # type: ignore[union-attr]
    digest = re.search(r'token_sha256 .*"([0-9a-f]{64})"', out).group(1)  # type: ignore[union-attr]
    assert digest == token_hash(token)
    config = from_dict({"api": {"token_sha256": [digest]}})
    assert Access(config.api.token_sha256).decide(
        _Request(UDP6EndpointAddress(("::1", 1, 0, 0), _Interface()), token)).allowed
    try:
        from_dict({"api": {"token_sha256": [token]}})  # the token itself, by mistake
    except ConfigError as e:
        assert token not in str(e) and "never the token" in str(e)
    else:
        raise AssertionError("a token in place of its hash must be refused")


def test_the_installer_token_reads_a_registration_and_nothing_else(tmp_path: Path) -> None:
    import contextlib

    from microgrid.coordinator.app import Coordinator
    from microgrid.coordinator.config import Config

    from ..conftest import free_udp_port

    config = Config()
    config.coap.port = free_udp_port()
    config.store.path = str(tmp_path / "c.db")
    config.ingest.installer_token = "install-day"

    async def go() -> None:
        c = Coordinator(config)
        c.store.register_device(PUB, "m1")
        await c.start()
        client = await aiocoap.Context.create_client_context()
        uri = f"coap://127.0.0.1:{config.coap.port}"
        try:
            async def get(path: str, token: str | None) -> aiocoap.Message:
                req = aiocoap.Message(code=Code.GET, uri=uri + path)
                if token is not None:
                    with_token(req, token)
                return await asyncio.wait_for(client.request(req).response, 10)

            device = "/devices?id=" + c.store.devices()[0].device_id
            assert (await get(device, "install-day")).code == Code.CONTENT
            assert (await get(device, "install-dax")).code == Code.UNAUTHORIZED
            assert (await get(device, None)).code == Code.UNAUTHORIZED
            assert (await get("/api/meters", "install-day")).code == Code.UNAUTHORIZED
        finally:
            with contextlib.suppress(Exception):
                await client.shutdown()
            await c.stop()

    asyncio.run(go())
