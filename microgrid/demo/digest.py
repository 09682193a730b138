"""`result_digest`: one hash of a run's economic results.

Two runs with the same seed must give the same trades, energy and money;
comparing this one value says whether they did. It covers, per interval,
the cleared book's hash and every trade, the settlement's delivered energy
and payment instructions; and per pair of coordinators, the satoshis the
payer signed over all its channels and what the payee holds signed. Not
covered: wall-clock figures, counts of retransmissions, and identifiers
that carry no money (device ids, transaction ids).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def economic_results(cleared: dict[int, Any], settled: dict[int, Any], traders: list[Any]) -> dict[str, Any]:
    """The figures the digest covers, as plain JSON-able data."""
    intervals = []
    for start in sorted(set(cleared) | set(settled)):
        c = cleared.get(start)
        s = settled.get(start)
        intervals.append({
            "start": start,
            "book": c.hash.hex() if c is not None else None,
            "price": c.price_sat_per_kwh if c is not None else None,
            "trades": [[t.buyer.hex(), t.seller.hex(), t.wh, t.price_sat_per_kwh, t.msat, t.fee_msat]
                       for t in (c.trades if c is not None else [])],
            "delivered_wh": s.delivered_wh if s is not None else None,
            "payments": sorted([p.kind, p.payer, p.payee, p.wh, p.sats, p.msat]
                               for p in (s.payments if s is not None else [])),
        })
    channels = {}
    for t in traders:
        for peer, sats in sorted(t.node.signed_by_peer("payer").items()):
            channels[f"{t.public_hex}->{peer}"] = {"signed_sat": sats}
        for peer, sats in sorted(t.node.signed_by_peer("payee").items()):
            channels.setdefault(f"{peer}->{t.public_hex}", {})["held_sat"] = sats
    return {"intervals": intervals, "channels": dict(sorted(channels.items()))}


def result_digest(results: dict[str, Any]) -> str:
    """SHA-256 (hex) of the results' canonical JSON."""
    text = json.dumps(results, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
