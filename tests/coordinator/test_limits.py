"""Limits (ingest/limits.py) and log rates (logs.RateLimitFilter), with
time passed in: per-source token buckets bounded in number, bad input
costing its source more, block-wise uploads refused early with Size1, one
log line per kind per period with the count of the others; and over real
UDP, an 11-byte datagram with a non-UTF-8 Uri-Path writes one line, no
traceback, and the server keeps serving."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from pathlib import Path

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from microgrid.coordinator.ingest.limits import SourceLimiter, block1_refusal
from microgrid.coordinator.logs import RateLimitFilter

from .test_ingest import make, post, served


def test_each_source_gets_its_rate_and_burst_and_the_table_is_bounded() -> None:
    now = [0.0]
    lim = SourceLimiter(rate=10, burst=5, max_sources=3, exempt=["127.0.0.1"], clock=lambda: now[0])
    assert [lim.allow("10.0.0.1") for _ in range(7)] == [True] * 5 + [False] * 2
    assert lim.allow("10.0.0.2")  # another source has its own bucket
    now[0] += 0.1  # one more request's worth
    assert lim.allow("10.0.0.1") and not lim.allow("10.0.0.1")
    assert all(lim.allow("::ffff:127.0.0.1") for _ in range(100))  # exempt, in both forms
    for i in range(100):
        lim.allow(f"10.1.0.{i}")
    assert len(lim) == 3  # spoofed sources cost bounded memory
    assert lim.dropped == 3


def test_bad_input_costs_its_source_more_than_good_input() -> None:
    now = [0.0]
    lim = SourceLimiter(rate=10, burst=20, clock=lambda: now[0], penalty=10)
    honest = fuzzer = 0
    for _ in range(100):  # ten seconds, 10 requests a second each
        now[0] += 0.1
        honest += lim.allow("10.0.0.1")
        if lim.allow("10.0.0.9"):
            fuzzer += 1
            lim.penalise("10.0.0.9")
    assert honest == 100 and fuzzer <= 12, (honest, fuzzer)


def test_a_block_wise_upload_is_refused_at_the_block_that_passes_the_limit() -> None:
    def block(num: int, size1: int | None = None, payload: int = 1024) -> aiocoap.Message:
        m = aiocoap.Message(code=Code.POST, payload=b"x" * payload)
        m.opt.block1 = BlockOption.BlockwiseTuple(num, True, 6)
        if size1 is not None:
            m.opt.size1 = size1
        return m

    assert block1_refusal(aiocoap.Message(code=Code.POST, payload=b"x" * 5000), 1024) is None  # not block-wise
    assert block1_refusal(block(0), 1024) is None
    refused = block1_refusal(block(1), 1024)
    assert refused is not None and refused.code == Code.REQUEST_ENTITY_TOO_LARGE and refused.opt.size1 == 1024
    announced = block1_refusal(block(0, size1=400 * 1024), 1024)  # refused before any data is kept
    assert announced is not None and b"409600" in announced.payload


def test_one_line_per_kind_per_period_with_the_count_of_the_others() -> None:
    now = [0.0]
    filt = RateLimitFilter(period_s=60, max_kinds=2, clock=lambda: now[0])
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(filt)
    second = logging.StreamHandler(io.StringIO())
    second.addFilter(filt)  # shared by two handlers: decided once per record
    logger = logging.getLogger("microgrid.test.ratelimit")
    logger.handlers[:] = [handler, second]
    logger.propagate = False
    try:
        for i in range(1000):
            logger.warning("reading rejected %s: %s", "4.00", f"junk {i}")
        logger.warning("another kind %d", 1)
        assert out.getvalue().splitlines() == ["reading rejected 4.00: junk 0", "another kind 1"]
        now[0] = 61.0
        assert filt.summaries() == ["999 more lines like microgrid.test.ratelimit: 'reading rejected %s: %s' "
                                    "suppressed in 61 s"]
        # The summary was this period's line for the kind: these wait.
        logger.warning("reading rejected %s: %s", "4.00", "again")
        logger.warning("reading rejected %s: %s", "4.00", "again")
        now[0] = 130.0
        logger.warning("reading rejected %s: %s", "4.00", "later")
        assert out.getvalue().splitlines()[2:] == ["reading rejected 4.00: later [2 more like this suppressed in 69 s]"]
        assert filt.summaries() == []  # reported once
        for i in range(10):  # many kinds: the table stays bounded
            logger.warning(f"kind {i}")
        assert len(filt._kinds) == 2
    finally:
        logger.handlers[:] = []


def test_a_non_utf8_uri_path_writes_one_line_and_no_traceback(tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)

    async def go() -> None:
        async with served(tmp_path) as (coord, client, uri):
            port = coord.config.coap.port
            datagram = bytes([0x40, 0x01, 0x00, 0x01, 0xB4]) + b"\xff\xfe\xfd\xfc" + b"\x00\x00"
            assert len(datagram) == 11
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(50):
                    s.sendto(datagram, ("127.0.0.1", port))
            # Served as before, after all of them.
            assert (await post(client, uri, make(1))).code == Code.CREATED
            assert coord.udp_guard.counts["undecodable"] == 50

    level = root.level
    root.setLevel(logging.WARNING)
    try:
        asyncio.run(go())
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    text = stream.getvalue()
    assert "Traceback" not in text and "UnicodeDecodeError" in text, text


def test_guessing_the_api_token_from_one_address_is_slowed_to_a_few_tries_a_second(tmp_path: Path) -> None:
    """Wrong tokens are answered 4.01, and each costs its source ten more
    requests: of 300 guesses sent at once from 127.0.0.2 only a few are
    answered; honest readings from 127.0.0.1 go on."""
    from microgrid.edge import coap as edge_coap

    async def go() -> None:
        async with served(tmp_path) as (coord, client, uri):
            port = coord.config.coap.port
            loop = asyncio.get_running_loop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.2", 0))
            sock.setblocking(False)
            sock.connect(("127.0.0.1", port))
            answers = 0
            try:
                for mid in range(300):
                    guess = f"guess-{mid}".encode()
                    datagram = edge_coap.encode(edge_coap.CON, 1, mid, b"",
                                                [(edge_coap.OPT_URI_PATH, b"api"), (edge_coap.OPT_URI_PATH, b"meters"),
                                                 (65002, guess)], b"")
                    await loop.sock_sendall(sock, datagram)
                while True:
                    try:
                        data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 1.0)
                    except asyncio.TimeoutError:
                        break
                    got = edge_coap.decode(data)
                    assert got is not None and got[1] == 129  # 4.01, never the meters
                    answers += 1
            finally:
                sock.close()
            assert 1 <= answers < 100, answers
            assert coord.udp_guard.counts["rate_limited"] >= 200
            assert (await post(client, uri, make(1))).code == Code.CREATED

    asyncio.run(go())
