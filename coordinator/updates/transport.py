"""CoAP for releases (RFC 7959 Block2, 1024-byte blocks): the resources a
coordinator serves to its meters and peers, and the client side that
fetches a manifest or one chunk from a peer.

    GET fw/manifest          the newest complete release for the meters' board (signed manifest)
    GET fw/<id16>/manifest   a held release's manifest (peers)
    GET fw/<id16>/table      its chunk table (peers and meters: the manifest signs its hash)
    GET fw/<id16>            the image, block-wise; a block of a chunk not held yet: 4.04
"""

from __future__ import annotations

from typing import Callable

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from microgrid.shared import release as release_format
from microgrid.shared.release import Release

from .store import ReleaseStore

SZX = 6
BLOCK = 1 << (SZX + 4)  # 1024
MAX_MANIFEST = release_format.MAX_MANIFEST
# The largest chunk table: a full slot in the smallest chunks.
MAX_TABLE = release_format.MAX_SIZE // 1024 * release_format.HASH_LEN


def _block_request(request: aiocoap.Message) -> tuple[int, int]:
    b = request.opt.block2
    if b is None:
        return 0, SZX
    return b.block_number, min(b.size_exponent, SZX)


def block_response(total: int, read: Callable[[int, int], bytes | None], request: aiocoap.Message) -> aiocoap.Message:
    """One Block2 block of a `total`-byte body; `read(offset, n)` gives the
    bytes or None when they are not held (4.04)."""
    num, szx = _block_request(request)
    size = 1 << (szx + 4)
    start = num * size
    if start >= total:
        return aiocoap.Message(code=Code.BAD_REQUEST, payload=b"block out of bounds")
    n = min(size, total - start)
    data = read(start, n)
    if data is None:
        return aiocoap.Message(code=Code.NOT_FOUND, payload=b"chunk not held yet")
    msg = aiocoap.Message(code=Code.CONTENT, payload=data)
    msg.opt.block2 = BlockOption.BlockwiseTuple(num, start + n < total, szx)
    return msg


class _BlockwiseResource(resource.Resource):
    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        # Each block is rendered on its own from what is on disk (aiocoap
        # would otherwise render the whole body and cache it per client).
        return False


class ManifestResource(_BlockwiseResource):
    def __init__(self, signed: Callable[[], bytes | None]) -> None:
        super().__init__()
        self.signed = signed

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        data = self.signed()
        if data is None:
            return aiocoap.Message(code=Code.NOT_FOUND, payload=b"no release offered")
        return block_response(len(data), lambda off, n: data[off:off + n], request)


class ImageResource(_BlockwiseResource):
    """The image of one release, read from its chunks: serves only what it
    holds (verified), so a coordinator passes chunks on while it fetches."""

    def __init__(self, store: ReleaseStore, rel: Release, served: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.store = store
        self.rel = rel
        self.served = served

    def _read(self, off: int, n: int) -> bytes | None:
        rel = self.rel
        i = off // rel.chunk
        data = self.store.chunk(rel, i)
        if data is None:
            return None
        start = off - i * rel.chunk
        out = data[start:start + n]
        if len(out) < n and i + 1 < rel.count:
            more = self.store.chunk(rel, i + 1)
            if more is None:
                return None
            out += more[:n - len(out)]
        if self.served is not None:
            self.served(len(out))
        return out

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return block_response(self.rel.size, self._read, request)


def add_release(site: resource.Site, store: ReleaseStore, rel: Release,
                served: Callable[[int], None] | None = None) -> None:
    rid = rel.release_id()[:16]
    site.add_resource(["fw", rid], ImageResource(store, rel, served))
    site.add_resource(["fw", rid, "manifest"], ManifestResource(lambda: rel.signed))
    table = store.table(rel)
    site.add_resource(["fw", rid, "table"], ManifestResource(lambda: table))


async def get_block(ctx: aiocoap.Context, endpoint: str, path: list[str], num: int) -> tuple[bytes, bool]:
    """(payload, more) of block `num`; OSError-like errors for no answer,
    ValueError for an answer that is not 2.05."""
    req = aiocoap.Message(code=Code.GET, uri=f"coap://{endpoint}/" + "/".join(path))
    req.opt.block2 = BlockOption.BlockwiseTuple(num, False, SZX)
    resp = await ctx.request(req, handle_blockwise=False).response
    if resp.code != Code.CONTENT:
        raise ValueError(f"GET {'/'.join(path)} block {num} from {endpoint}: {resp.code}")
    more = bool(resp.opt.block2.more) if resp.opt.block2 is not None else False
    return resp.payload, more


async def _get_body(ctx: aiocoap.Context, endpoint: str, path: list[str], limit: int) -> bytes:
    out = b""
    num = 0
    while len(out) <= limit:
        data, more = await get_block(ctx, endpoint, path, num)
        out += data
        if not more:
            return out
        num += 1
    raise ValueError(f"{'/'.join(path)} from {endpoint} exceeds {limit} bytes")


async def get_manifest(ctx: aiocoap.Context, endpoint: str, release_id: str) -> bytes:
    return await _get_body(ctx, endpoint, ["fw", release_id[:16], "manifest"], MAX_MANIFEST)


async def get_table(ctx: aiocoap.Context, endpoint: str, release_id: str) -> bytes:
    """A release's chunk table (checked by the caller against its manifest)."""
    return await _get_body(ctx, endpoint, ["fw", release_id[:16], "table"], MAX_TABLE)


async def get_chunk(ctx: aiocoap.Context, endpoint: str, rel: Release, i: int) -> bytes:
    per = rel.chunk // BLOCK
    want = rel.chunk_len(i)
    out = b""
    for k in range(per):
        data, more = await get_block(ctx, endpoint, ["fw", rel.release_id()[:16]], i * per + k)
        out += data
        if len(out) >= want or not more:
            break
    return out


class ReportResource(resource.Resource):
    """POST fw/report: a meter's signed update outcome (rollout.py)."""

    def __init__(self, accept: Callable[[bytes], str | None]) -> None:
        super().__init__()
        self.accept = accept

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        why = self.accept(request.payload)
        if why is not None:
            return aiocoap.Message(code=Code.BAD_REQUEST, payload=why.encode()[:200])
        return aiocoap.Message(code=Code.CHANGED, payload=b"recorded")
