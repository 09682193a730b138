"""Peer-to-peer delivery, sans I/O: the announcement a coordinator puts in
the overlay, which chunk to ask which peer for next, a peer that served a
bad chunk avoided, and the byte rate fetches may use. Time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cbor2

from microgrid.shared.release import Release

ANNOUNCE_KEY = "microgrid/releases"
STRIKES = 3  # network failures in a row before a peer rests
REST_S = 60.0


class AnnouncementError(ValueError):
    pass


@dataclass(frozen=True)
class Announcement:
    release_id: str  # SHA-256 of the image, hex
    version: str
    board: str
    endpoint: str  # "host:port" of the holder's CoAP server


def announcement(rel: Release, endpoint: str) -> bytes:
    return cbor2.dumps({"id": rel.release_id(), "version": rel.version, "board": rel.board, "at": endpoint})


def parse_announcement(body: bytes) -> Announcement:
    try:
        d = cbor2.loads(body)
    except Exception as e:  # cbor2 raises several kinds on hostile input
        raise AnnouncementError(f"announcement is not CBOR: {e}") from None
    if not isinstance(d, dict):
        raise AnnouncementError("announcement must be a map")
    rid, version, board, at = d.get("id"), d.get("version"), d.get("board"), d.get("at")
    if not (isinstance(rid, str) and len(rid) == 64 and all(c in "0123456789abcdef" for c in rid)):
        raise AnnouncementError(f"announcement id {rid!r}: expected 64 lower-case hex digits")
    for name, v in (("version", version), ("board", board), ("at", at)):
        if not isinstance(v, str) or not 0 < len(v) <= 64:
            raise AnnouncementError(f"announcement {name} {v!r}: expected a short string")
    assert isinstance(version, str) and isinstance(board, str) and isinstance(at, str)
    return Announcement(rid, version, board, at)


class RateLimit:
    """A token bucket over bytes: `wait(n, now)` is how long to wait
    before n bytes may go (0: at once, and they are taken)."""

    def __init__(self, rate_bytes_s: float, burst: float | None = None) -> None:
        self.rate = float(rate_bytes_s)
        self.burst = float(burst if burst is not None else rate_bytes_s)
        self.tokens = self.burst
        self.at: float | None = None

    def wait(self, n: int, now: float) -> float:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= min(n, self.burst):
            self.tokens -= n
            return 0.0
        return (min(n, self.burst) - self.tokens) / self.rate


@dataclass
class PeerState:
    bad_chunks: int = 0
    strikes: int = 0
    rest_until: float = 0.0
    served: int = 0


@dataclass
class FetchPlan:
    """The chunks of one release still missing, and the peers holding it."""

    rel: Release
    missing: list[int]
    peers: dict[str, PeerState] = field(default_factory=dict)
    _turn: int = 0

    def add_peer(self, endpoint: str) -> None:
        self.peers.setdefault(endpoint, PeerState())

    def usable(self, now: float) -> list[str]:
        return sorted(e for e, p in self.peers.items() if p.bad_chunks == 0 and p.rest_until <= now)

    def next(self, now: float) -> tuple[int, str] | None:
        """(chunk, peer) to fetch next, peers taken in turn; None when done
        or no peer is usable now."""
        peers = self.usable(now)
        if not self.missing or not peers:
            return None
        self._turn += 1
        return self.missing[0], peers[self._turn % len(peers)]

    def got(self, i: int, endpoint: str, ok: bool) -> None:
        """Chunk i arrived from `endpoint`; ok: its hash matched. A peer
        that served one bad chunk is not asked again (it is lying or
        broken; honest peers serve verified chunks only)."""
        p = self.peers.setdefault(endpoint, PeerState())
        if ok:
            p.served += 1
            p.strikes = 0
            if i in self.missing:
                self.missing.remove(i)
        else:
            p.bad_chunks += 1

    def failed(self, endpoint: str, now: float) -> None:
        """No answer: after STRIKES in a row the peer rests REST_S."""
        p = self.peers.setdefault(endpoint, PeerState())
        p.strikes += 1
        if p.strikes >= STRIKES:
            p.rest_until = now + REST_S
            p.strikes = 0

    @property
    def done(self) -> bool:
        return not self.missing

    def avoided(self) -> list[str]:
        return sorted(e for e, p in self.peers.items() if p.bad_chunks)
