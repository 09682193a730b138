"""Live totals between counterparties, over CoAP: each coordinator serves
its newest signed live record per interval, and the few coordinators that
need it (delivery.live_needed) fetch it from there.

Why not the overlay: every read of a record there comes back from 16
storing nodes, and a zone's live key is read by each trader of the zone
every poll. Measured with 2,000 households in zones of 100 at the default
60-s poll (bench_overlay households --live-polls 15, overlay/README.md):
household nodes carried p50 1.15 MB per interval and the nodes storing a
zone's live key up to 22 MB. From the publisher's own coordinator the
same record costs one request and one answer.

    GET coap://<the publisher's contact host:port>/live?start=<interval start>

answers 2.05 with the record (overlay/records.py, signed by the
coordinator's key, key name `mg/live/<zone>/<start>`, body
`{"export_wh": int, "import_wh": int}`), or 4.04 when it has none for that
interval. The resource is open like /channel (ingest/guard.py): the record
proves itself; a reader checks the signature, the key name (so a record of
another zone or interval is refused) and that the publisher is the one it
asked. Nothing fetched is trusted further than that.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers.codes import Code

from ..overlay import records

log = logging.getLogger("microgrid.trading")

PATH = ("live",)
COSE_SIGN1 = 18  # CoAP Content-Format application/cose; cose-type="cose-sign1"
KEEP_INTERVALS = 4  # the newest record of this many intervals is served
FETCH_TIMEOUT_S = 5.0
# A coordinator whose directory record was not found is looked up again
# after this long, not at every poll (each lookup is an overlay read).
UNKNOWN_RETRY_S = 300.0


class LiveRecords:
    """The newest signed live record of each recent interval (ours)."""

    def __init__(self, keep: int = KEEP_INTERVALS) -> None:
        self.keep = keep
        self._by_start: dict[int, bytes] = {}

    def put(self, start: int, raw: bytes) -> None:
        self._by_start[start] = bytes(raw)
        for old in sorted(self._by_start)[:-self.keep]:
            del self._by_start[old]

    def get(self, start: int) -> bytes | None:
        return self._by_start.get(start)


class LiveResource(resource.Resource):
    """GET /live?start=<interval start>: our newest live record for it."""

    def __init__(self, record: Callable[[int], bytes | None]) -> None:
        super().__init__()
        self.record = record

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        start = None
        for q in request.opt.uri_query:
            name, _, value = q.partition("=")
            if name == "start" and value.isdigit() and len(value) <= 12:
                start = int(value)
        if start is None:
            return aiocoap.Message(code=Code.BAD_REQUEST, payload=b"expected ?start=<interval start, unix seconds>")
        raw = self.record(start)
        if raw is None:
            return aiocoap.Message(code=Code.NOT_FOUND, payload=b"no live total for that interval")
        return aiocoap.Message(code=Code.CONTENT, payload=raw, content_format=COSE_SIGN1)


def live_uri(contact_uri: str, start: int) -> str:
    """The live resource beside a coordinator's contact URI (its
    directory record's `coap`, e.g. coap://host:port/channel)."""
    u = urlsplit(contact_uri)
    return urlunsplit((u.scheme, u.netloc, "/" + "/".join(PATH), f"start={start}", ""))


def parse_live(raw: bytes, key: str, publisher: bytes, now: float) -> tuple[int, int]:
    """(export Wh, import Wh) from a fetched record, or RecordError: it
    must verify, be live, name `key` and come from `publisher`."""
    rec = records.verify(raw, key, now)
    if rec.publisher != publisher:
        raise records.RecordError(f"signed by {rec.publisher.hex()[:16]}, not the coordinator asked")
    try:
        d = json.loads(rec.body)
        export_wh, import_wh = int(d["export_wh"]), int(d["import_wh"])
    except (ValueError, KeyError, TypeError) as e:
        raise records.RecordError(f"live body: {e}") from None
    if export_wh < 0 or import_wh < 0:
        raise records.RecordError(f"live body: negative figures {export_wh}, {import_wh}")
    return export_wh, import_wh


class Unreachable(Exception):
    """The coordinator did not answer (look its address up again)."""


async def fetch_live(context: Any, contact_uri: str, start: int, key: str, publisher: bytes, now: float,
                     timeout_s: float = FETCH_TIMEOUT_S) -> tuple[int, int] | None:
    """A counterparty's live figures from its coordinator; None when it has
    none for the interval yet or sent a record that does not prove itself
    (logged): payments then wait for the next poll or the settlement.
    Raises Unreachable when it did not answer."""
    uri = live_uri(contact_uri, start)
    try:
        request = aiocoap.Message(code=Code.GET, uri=uri)
        response = await asyncio.wait_for(context.request(request).response, timeout_s)
    except (asyncio.TimeoutError, OSError, aiocoap.error.Error) as e:
        raise Unreachable(f"{uri}: {type(e).__name__}") from None
    if response.code == Code.NOT_FOUND:
        return None
    if response.code != Code.CONTENT:
        log.info("live total of %s for %d: %s answered %s", publisher.hex()[:16], start, uri, response.code)
        return None
    try:
        return parse_live(bytes(response.payload), key, publisher, now)
    except records.RecordError as e:
        log.warning("live total of %s for %d from %s refused: %s", publisher.hex()[:16], start, uri, e)
        return None


class LiveFetcher:
    """Fetches counterparties' live figures, remembering where each
    coordinator is (its directory record, looked up again when it stops
    answering) so a poll costs no overlay read."""

    def __init__(self, context: Any, lookup_uri: Callable[[str], Any], clock: Callable[[], float],
                 timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self.context = context
        self.lookup_uri = lookup_uri
        self.clock = clock
        self.timeout_s = timeout_s
        self.uris: dict[bytes, str] = {}
        self.unknown_until: dict[bytes, float] = {}
        self.counts = {"fetched": 0, "missing": 0, "unreachable": 0, "unknown": 0}

    async def fetch(self, publisher: bytes, start: int, key: str) -> tuple[int, int] | None:
        uri = self.uris.get(publisher)
        if uri is None:
            if self.clock() < self.unknown_until.get(publisher, 0.0):
                self.counts["unknown"] += 1
                return None
            uri = await self.lookup_uri(publisher.hex())
            if uri is None:
                self.counts["unknown"] += 1
                self.unknown_until[publisher] = self.clock() + UNKNOWN_RETRY_S
                return None
            self.uris[publisher] = uri
            self.unknown_until.pop(publisher, None)
        try:
            got = await fetch_live(self.context, uri, start, key, publisher, self.clock(), self.timeout_s)
        except Unreachable as e:
            self.counts["unreachable"] += 1
            self.uris.pop(publisher, None)  # moved, perhaps: its directory record says where
            log.info("live total of %s for %d: %s", publisher.hex()[:16], start, e)
            return None
        self.counts["fetched" if got is not None else "missing"] += 1
        return got

    async def fetch_all(self, publishers: list[bytes], start: int, key: str) -> dict[bytes, tuple[int, int]]:
        got = await asyncio.gather(*(self.fetch(p, start, key) for p in publishers))
        return {p: v for p, v in zip(publishers, got) if v is not None}
