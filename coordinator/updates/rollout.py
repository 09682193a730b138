"""Staged rollout and what meters report, sans I/O.

A meter reports the outcome of each update in a message signed with its
own device key (edge/ota.py: after it confirmed the new image, or after
the old one booted again): the same COSE_Sign1/ES256K envelope as its
readings, payload a CBOR map {"v": running version, "to": the version
tried, "ok": bool, "why": reason}. report.py checks the signature against
the registered device key before anything here sees it.

With `canary` = N > 0, a release is offered to N meters first (the first
N that deliver a reading while it is offered); the others are offered it
once N meters have reported it confirmed. A single rollback of that
version halts its rollout (status says which meter and why) until a newer
release comes. canary = 0 offers every meter at once.

With a `history` (history.py: the coordinator's SQLite database) every
report, canary and halt is written as it happens and read back at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cbor2

from microgrid.shared import cose, reading, secp256k1


class ReportError(ValueError):
    pass


@dataclass(frozen=True)
class Report:
    device: str
    version: str
    tried: str
    ok: bool
    why: str


def parse_report(data: bytes, device_key: Any) -> Report:
    """A meter's signed update report, verified with its registered key
    (`device_key(device_id)` -> compressed key or None)."""
    try:
        msg = cose.parse(data)
    except cose.COSEError as e:
        raise ReportError(f"report: {e}") from None
    kid = msg.headers.get(cose.HDR_KID)
    if msg.headers.get(cose.HDR_ALG) != reading.ALG_ES256K or not isinstance(kid, bytes) or len(kid) != 8:
        raise ReportError("report: expected ES256K with an 8-byte kid")
    device = kid.hex()
    pub = device_key(device)
    if pub is None:
        raise ReportError(f"report from unregistered device {device}")
    if not secp256k1.verify(pub, msg.to_be_signed(), msg.signature):
        raise ReportError(f"report from {device}: bad signature")
    try:
        body = cbor2.loads(msg.payload)
    except Exception as e:  # hostile bytes
        raise ReportError(f"report from {device}: payload is not CBOR: {e}") from None
    if not isinstance(body, dict):
        raise ReportError(f"report from {device}: payload must be a map")
    v, to, ok, why = body.get("v"), body.get("to"), body.get("ok"), body.get("why", "")
    if not (isinstance(v, str) and isinstance(to, str) and isinstance(ok, bool) and isinstance(why, str)):
        raise ReportError(f"report from {device}: expected v, to (strings), ok (bool), why (string)")
    return Report(device, v[:32], to[:32], ok, why[:200])


@dataclass
class Rollout:
    canary: int = 0
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> last report
    offered: dict[str, set[str]] = field(default_factory=dict)  # version -> canaries
    halted: dict[str, str] = field(default_factory=dict)  # version -> why
    history: Any = None  # history.UpdateHistory, or None (kept in memory only)
    pending: dict[str, str] = field(default_factory=dict)  # device -> version offered, no report since

    def restore(self) -> None:
        """What the history holds, after a restart."""
        if self.history is not None:
            self.meters, self.offered, self.halted = self.history.load()

    def record(self, r: Report, now: float) -> None:
        before = self.meters.get(r.device) or {}
        m: dict[str, Any] = {"version": r.version, "tried": r.tried, "ok": r.ok, "why": r.why, "at": int(now)}
        if not r.ok:
            m["last_rollback"] = {"version": r.tried, "why": r.why, "at": int(now)}
        elif before.get("last_rollback"):
            m["last_rollback"] = before["last_rollback"]  # shown until a newer one
        self.meters[r.device] = m
        self.pending.pop(r.device, None)
        if self.history is not None:
            self.history.meter(r.device, m)
        if not r.ok and r.tried not in self.halted:
            self.halted[r.tried] = f"rolled back on {r.device}: {r.why}"
            if self.history is not None:
                self.history.halt(r.tried, self.halted[r.tried])

    def confirmed(self, version: str) -> int:
        return sum(1 for m in self.meters.values() if m["ok"] and m["version"] == version)

    def may_offer(self, device: str | None, version: str) -> bool:
        if version in self.halted:
            return False
        m = self.meters.get(device or "")
        if m is not None and m["version"] == version:
            return False  # it runs it already
        if self.canary <= 0:
            return True
        canaries = self.offered.setdefault(version, set())
        if device in canaries or self.confirmed(version) >= self.canary:
            return True
        if device is not None and len(canaries) < self.canary:
            canaries.add(device)
            if self.history is not None:
                self.history.canary(version, device)
            return True
        return False

    def offered_to(self, device: str | None, version: str) -> None:
        """`device` was just offered `version`: in progress until it reports."""
        if device:
            self.pending[device] = version

    def meter_view(self, device: str, latest: str | None) -> dict[str, Any]:
        """One meter's firmware as users see it (API, MQTT): what it runs
        (as it last reported; None before any report), the newest release
        for its board, an update in progress, the last rollback."""
        m = self.meters.get(device) or {}
        out: dict[str, Any] = {"device_id": device, "installed_version": m.get("version"),
                               "latest_version": latest, "in_progress": device in self.pending,
                               "last_report_at": m.get("at"), "last_rollback": m.get("last_rollback")}
        if latest is not None and latest in self.halted:
            out["halted"] = self.halted[latest]
        return out

    def status(self) -> dict[str, Any]:
        return {"canary": self.canary, "halted": dict(self.halted),
                "canaries": {v: sorted(c) for v, c in self.offered.items()}, "meters": dict(self.meters)}
