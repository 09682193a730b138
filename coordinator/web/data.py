"""What the pages show, read from the running coordinator: no SQL and no
state of its own. Meters and readings from the reading store, energy per
period from trading/metering.py's `interval_energy` (the market's own
definition of a household's import and export), the market from the
trading service's rounds, channels from the channel node, the wallet's
balance from the wallet.

Plain dicts and numbers out, so templates stay dumb and tests read them.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import Any

from ..trading.metering import interval_energy

SILENT_AFTER_S = 300  # a meter quiet this long is flagged
MSAT_PER_SAT = 1000


def power_rows(coord: Any, now: float) -> list[dict[str, Any]]:
    """Each meter's last reading: power (+ import, - export), age, source."""
    out = []
    for d in coord.store.devices():
        last = coord.store.last_reading(d.device_id)
        row: dict[str, Any] = {"id": d.device_id, "name": d.name or d.device_id, "power_w": None, "age_s": None,
                               "source": "", "voltage_v": None, "flags": 0, "wired": not d.public_key}
        if last is not None:
            extra = json.loads(last["extra"]) if last.get("extra") else {}
            row.update(power_w=float(last["power_w"]), age_s=max(0.0, now - float(last["time"])),
                       source=last.get("source") or "", voltage_v=float(last["voltage_v"]),
                       flags=int(extra.get("flags", 0) or 0), rssi=extra.get("rssi"))
        row["silent"] = row["age_s"] is None or row["age_s"] > SILENT_AFTER_S
        out.append(row)
    return out


def house(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The connection's flow now: the meters' powers summed, as import or export."""
    net = sum(r["power_w"] for r in rows if r["power_w"] is not None and not r["silent"])
    return {"net_w": net, "import_w": max(net, 0.0), "export_w": max(-net, 0.0)}


def relays(coord: Any) -> list[dict[str, str]]:
    return [{"name": name, "state": str(r.state)} for name, r in sorted((coord.relays or {}).items())]


def market_now(coord: Any, now: float) -> dict[str, Any] | None:
    """The interval in progress and its clearing, with our trades in it:
    whom energy flows to or from, and at what price."""
    t = coord.trading
    if t is None:
        return None
    step = t.market_settings.interval_s
    start = int(now) // step * step
    cleared = t.stats.cleared.get(start)
    nxt = t.stats.cleared.get(start + step)
    me = bytes.fromhex(t.public_hex)
    flows = []
    for tr in (cleared.trades if cleared is not None else ()):
        if tr.seller == me:
            flows.append({"direction": "to", "peer": tr.buyer.hex()[:16], "wh": tr.wh, "sat": tr.msat / MSAT_PER_SAT})
        elif tr.buyer == me:
            flows.append({"direction": "from", "peer": tr.seller.hex()[:16], "wh": tr.wh,
                          "sat": -(tr.msat + tr.fee_msat) / MSAT_PER_SAT})
    return {"zone": t.market_settings.zone, "start": start, "end": start + step,
            "price": None if cleared is None else cleared.price_sat_per_kwh,
            "volume_wh": 0 if cleared is None else cleared.volume_wh,
            "next_price": None if nxt is None else nxt.price_sat_per_kwh,
            "flows": flows, "net_sat": sum(f["sat"] for f in flows),
            "import_tariff": t.market_settings.import_tariff_sat_per_kwh,
            "export_tariff": t.market_settings.export_tariff_sat_per_kwh}


def now_page(coord: Any, now: float | None = None) -> dict[str, Any]:
    now = coord.clock.now() if now is None else now
    rows = power_rows(coord, now)
    return {"t": now, "meters": rows, "house": house(rows), "market": market_now(coord, now),
            "relays": relays(coord)}


# -- money ----------------------------------------------------------------------------


PERIODS = {"day": 86_400, "week": 7 * 86_400, "month": 30 * 86_400}


def money(coord: Any, now: float) -> dict[str, Any]:
    """Earnings and spending over the last day, week and month from the
    settled dues (durable: store/dues.py), the channels, the wallet."""
    t = coord.trading
    sums: dict[str, dict[str, int]] = {}
    if t is not None:
        for p, span in PERIODS.items():
            earned, sold, spent, bought = t.dues.totals_since(t.public_hex, int(now) - span)
            sums[p] = {"earned_sat": earned, "sold_wh": sold, "spent_sat": spent, "bought_wh": bought}
    channels = []
    node = getattr(coord.channel_lifecycle, "node", None)
    if node is not None:
        for cid, e in node.channels.items():
            terms = e.channel.terms
            lock = terms.refund_locktime
            channels.append({"id": cid.hex()[:16], "role": e.role, "peer": e.peer.hex()[:16],
                             "state": e.channel.state.value, "capacity_sat": terms.capacity,
                             "paid_sat": _signed(e.channel), "expires": lock})
    wallet = coord.wallet
    return {"periods": sums, "channels": channels,
            "balance_sat": None if wallet is None else wallet.balance(),
            "reserved_sat": None if wallet is None else wallet.balance(True) - wallet.balance()}


def money_buckets(coord: Any, now: float, by: str, utc_offset_s: int = 0) -> list[dict[str, Any]]:
    """Earned and spent per local day (last 14), week (last 8, from
    Monday) or calendar month (last 12), newest first, from the dues."""
    t = coord.trading
    if t is None:
        return []
    local = dt.datetime.fromtimestamp(int(now) + utc_offset_s, dt.timezone.utc).replace(hour=0, minute=0, second=0)
    starts: list[dt.datetime] = []
    if by == "day":
        starts = [local - dt.timedelta(days=i) for i in range(14)]
    elif by == "week":
        monday = local - dt.timedelta(days=local.weekday())
        starts = [monday - dt.timedelta(weeks=i) for i in range(8)]
    else:
        first = local.replace(day=1)
        for _ in range(12):
            starts.append(first)
            first = (first - dt.timedelta(days=1)).replace(day=1)
    edges = [int(s.timestamp()) - utc_offset_s for s in starts]  # newest first
    out = [{"start": e, "earned_sat": 0, "sold_wh": 0, "spent_sat": 0, "bought_wh": 0} for e in edges]
    me = t.public_hex
    for start, payer, payee, wh, sats in t.dues.rows_since(me, edges[-1]):
        i = next(k for k, e in enumerate(edges) if start >= e)
        if payee == me:
            out[i]["earned_sat"] += sats
            out[i]["sold_wh"] += wh
        if payer == me:
            out[i]["spent_sat"] += sats
            out[i]["bought_wh"] += wh
    return out


def _signed(channel: Any) -> int:
    from ..channels.protocol import signed_amount

    return int(signed_amount(channel))


# -- history ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    start: int
    end: int
    import_wh: int
    export_wh: int

    @property
    def self_sufficiency(self) -> float | None:
        """What the household's own generation covered of its use: the
        meters' exports (generation) against their imports (use)."""
        if self.import_wh <= 0:
            return None
        return min(self.export_wh, self.import_wh) / self.import_wh


def history(coord: Any, now: float, span: str, utc_offset_s: int = 0) -> list[Bucket]:
    """Energy per bucket: hours of the last day, days of the last week or
    month (local time). See `bucket_energy`."""
    size, count = {"day": (3600, 24), "week": (86_400, 7), "month": (86_400, 30)}[span]
    end = (int(now) + utc_offset_s) // size * size - utc_offset_s + size
    edges = [end - i * size for i in range(count, -1, -1)]
    # The connection's meters: a charger behind the house meter is a sub-meter (devices/charger_metering.py).
    connection = getattr(coord, "connection_device_ids", None)
    ids = connection() if connection is not None else [d.device_id for d in coord.store.devices()]
    return [Bucket(a, b, imp, exp) for (a, b), (imp, exp) in zip(zip(edges, edges[1:]),
                                                                  bucket_energy(coord.store, ids, edges, now))]


def bucket_energy(store: Any, device_ids: list[str], edges: list[int], now: float) -> list[tuple[int, int]]:
    """(import Wh, export Wh) between consecutive edges, over all meters.

    Each meter's counters are read at the edges (`counters_at`: one indexed
    look-up each, so a month of days costs 31 per meter however many
    readings there are), and a bucket is their difference. Where that is
    not exact, the bucket is walked reading by reading as the market
    meters (trading/metering.py's `interval_energy`): the meter's first
    bucket (nothing before it) and a counter reset inside one (counters
    that ran back). Retention keeps one reading an hour after
    `retention_raw_days` and one a day after `retention_hourly_days`: a
    bucket finer than what is kept shows its energy in the bucket of the
    next kept reading, never lost or counted twice."""
    out = [[0, 0] for _ in edges[1:]]
    for dev in device_ids:
        counters = [store.counters_at(dev, min(e, now)) for e in edges]
        for i, (a, b) in enumerate(zip(counters, counters[1:])):
            if b is None:
                continue  # no reading yet by the bucket's end
            if a is None or b[0] < a[0] or b[1] < a[1]:
                e = interval_energy(store, [dev], edges[i], min(edges[i + 1], now))
                imp, exp = e.import_wh, e.export_wh
            else:
                imp, exp = b[0] - a[0], b[1] - a[1]
            out[i][0] += imp
            out[i][1] += exp
    return [(imp, exp) for imp, exp in out]


def price_history(coord: Any, since: float) -> list[tuple[int, int]]:
    t = coord.trading
    if t is None:
        return []
    return sorted((s, c.price_sat_per_kwh) for s, c in t.stats.cleared.items()
                  if s >= since and c.price_sat_per_kwh is not None)


# -- devices and alerts ----------------------------------------------------------------------


def alerts(coord: Any, now: float, wallet_low_sat: int, expiry_alert_s: int) -> list[str]:
    out = []
    for r in power_rows(coord, now):
        if r["silent"]:
            age = "never" if r["age_s"] is None else f"{int(r['age_s'] // 60)} min ago"
            out.append(f"meter {r['name']} is silent (last reading: {age})")
        if r["flags"] & 4:
            out.append(f"meter {r['name']}: its clock is not set")
    if now < 1_600_000_000:
        out.append("this coordinator's clock is not set")
    m = money(coord, now)
    if m["balance_sat"] is not None and m["balance_sat"] < wallet_low_sat:
        out.append(f"wallet low: {m['balance_sat']} sat (alert below {wallet_low_sat})")
    for c in m["channels"]:
        if c["expires"] and c["state"] == "open" and 0 < c["expires"] - now < expiry_alert_s:
            out.append(f"channel {c['id']} with {c['peer']} closes within {int((c['expires'] - now) // 3600)} h")
    return out


def fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def fmt_ago(age_s: float | None) -> str:
    """An age as a person reads it: 40 s, 12 min, 3 h, 2 d."""
    if age_s is None:
        return "never"
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if age_s >= 2 * size:
            return f"{int(age_s // size)} {unit} ago"
    return f"{int(age_s)} s ago"


def now_s() -> float:
    return time.time()
