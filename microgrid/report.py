"""The demo's report: one self-contained HTML page with SVG plots, plus the
JSON the page was drawn from. No plotting library and no script: the
charts are simple, and the page must open anywhere, offline, years from
now, and print on A4.

Written for the households, not for us: every label in plain words with
its unit, times in the street's local time with the date and the zone
named on every time axis, money by one definition (microgrid/demo/money.py,
stated under the tables), per household what it bought and sold, paid and
received, and what the same energy would have cost at the utility's tariff.

Input (the `data` dict):
    summary       flat dict of headline figures (also printed and in --json)
    params        the options the run used
    timezone      {"name": "UTC+01:00", "offset_s": 3600} (default UTC)
    tariff        {"import_sat_per_kwh", "export_sat_per_kwh"} (the utility's)
    intervals     list of {"start": unix s, "generation_wh", "consumption_wh",
                  "traded_wh", "clearing_price" (sat/kWh or None),
                  "self_sufficiency" (0..1 or None)}
    channels      list of {"name", "capacity_sat", "series": [[unix s, paid_sat], ...]}
    participants  list of dicts (one row per household; keys as PARTICIPANT_COLUMNS)
    money         list of per-seller reconciliation rows (microgrid/demo/money.py)
    grid          optional: the feeder's power flow per interval (microgrid/demo/grid.py)
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 700, 260, 64, 16, 42, 52

# What the summary shows, in order, in words (with units). Other figures
# are in report.json only.
SUMMARY_LABELS = [
    ("simulated_days", "Simulated days"),
    ("coordinators", "Households (one coordinator each)"),
    ("meters", "Meters"),
    ("readings_produced", "Readings made by the meters"),
    ("readings_accepted", "Readings accepted by the coordinators"),
    ("readings_thinned", "Older readings thinned by retention (their energy kept)"),
    ("readings_rejected", "Readings refused"),
    ("energy_matched_wh", "Energy matched in the market (Wh)"),
    ("energy_traded_wh", "Energy delivered between neighbours (Wh)"),
    ("trades", "Trades"),
    ("p2p_value_sat", "Worth at the clearing prices (sat)"),
    ("p2p_owed_sat", "Owed by the settlements (sat)"),
    ("paid_sat", "Paid between neighbours (sat)"),
    ("on_ledger_sat", "Received by sellers on the ledger (sat)"),
    ("p2p_unpaid_sat", "Owed and not yet paid (sat)"),
    ("money_reconciles", "Money reconciles to the satoshi"),
    ("money_within_1_sat_per_interval", "Each seller's receipts within 1 sat per interval of its energy's worth"),
    ("payment_updates", "Channel payments made"),
    ("channels_opened", "Payment channels opened"),
    ("channel_rollovers", "Of those, opened to replace an expiring one"),
    ("settlement_txs", "Channels closed on the ledger"),
    ("book_disagreements", "Times coordinators disagreed on a cleared book"),
    ("energy_balance_error_wh", "Energy unaccounted for (Wh)"),
    ("elapsed_s", "Real time the run took (s)"),
    ("result_digest", "Result fingerprint (SHA-256 of trades, energy and money)"),
]

PARAM_LABELS = {
    "coordinators": "Households", "meters": "Meters", "days": "Simulated days", "seed": "Seed",
    "speed": "Speed ceiling (simulated s per real s)", "start": "Start", "increment_wh": "Energy per channel payment (Wh)",
    "reading_s": "Seconds between readings",
}

MONEY_COLUMNS = [
    ("name", "Seller"),
    ("delivered_wh", "Delivered to buyers (Wh)"),
    ("value_sat", "Worth at clearing prices (sat)"),
    ("owed_sat", "Owed by the settlements (sat)"),
    ("rounding_sat", "Rounding up (sat)"),
    ("paid_sat", "Paid by the buyers (sat)"),
    ("ahead_sat", "Paid ahead (sat)"),
    ("on_ledger_sat", "Received on the ledger (sat)"),
    ("reconciles", "Reconciles"),
]

MONEY_DEFINITION = (
    "Worth: the energy each seller delivered to its buyers, as each interval's settlement found it, times that "
    "interval's clearing price, exact to the millisatoshi. Owed: what the settlements said the buyers owe, "
    "rounded up once per buyer and interval (under 1 sat each). Paid: what the buyers signed to the seller on "
    "their payment channels, streamed as the energy arrived and topped up after each settlement; this is the "
    "one meaning of \u201cpaid\u201d everywhere in this report. Paid ahead: paid beyond what was owed, when the "
    "seller's net export fell later in an interval; it counts against what that buyer owes next. Received on "
    "the ledger: what the closing transactions paid the seller; channel fees come out of the buyer's change, "
    "never out of the seller's share. It reconciles when received = paid and paid = owed + paid ahead.")

HOUSEHOLD_DEFINITION = (
    "Bought and sold: energy delivered between neighbours. From and to the utility: the rest of the household's "
    "net import and export at its grid connection. Self-sufficiency: the share of the household's consumption "
    "that did not come from the utility (its own generation and its neighbours'). Net cost: the utility's bill, "
    "plus grid fees and what it paid its neighbours, less what its neighbours paid it and the utility's credit "
    "for export. Utility only: the same energy bought from and sold to the utility at its tariff, as if there "
    "were no market.")


def _tz(data: dict[str, Any]) -> tuple[timezone, str]:
    zone = data.get("timezone") or {}
    offset = int(zone.get("offset_s", 0))
    name = str(zone.get("name") or ("UTC" if offset == 0 else _offset_name(offset)))
    return timezone(timedelta(seconds=offset), name), name


def _offset_name(offset: int) -> str:
    sign = "+" if offset >= 0 else "-"
    h, m = divmod(abs(offset) // 60, 60)
    return f"UTC{sign}{h:02d}:{m:02d}"


def _time_ticks(x0: float, x1: float, tz: timezone) -> list[tuple[float, str]]:
    """Tick times and labels, every one with its date: hours within a day
    or two, midnights across weeks, Mondays beyond."""
    span = max(x1 - x0, 1.0)
    steps = [(3600, "%d %b %H:%M"), (3 * 3600, "%d %b %H:%M"), (6 * 3600, "%d %b %H:%M"), (12 * 3600, "%d %b %H:%M"),
             (86400, "%d %b"), (2 * 86400, "%d %b"), (7 * 86400, "%d %b"), (14 * 86400, "%d %b"), (28 * 86400, "%d %b %Y")]
    step, fmt = steps[-1]
    for s, f in steps:
        if span / s <= 7:
            step, fmt = s, f
            break
    delta = tz.utcoffset(None)
    offset = delta.total_seconds() if delta is not None else 0.0
    first = (int(x0 + offset) // step + (1 if (x0 + offset) % step else 0)) * step - offset
    ticks = []
    t = first
    while t <= x1 + 1e-6:
        ticks.append((t, datetime.fromtimestamp(t, tz).strftime(fmt).lstrip("0")))
        t += step
    if not ticks:  # a span shorter than the step: label both ends
        ticks = [(x, datetime.fromtimestamp(x, tz).strftime("%d %b %H:%M").lstrip("0")) for x in (x0, x1)]
    return ticks


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** (len(str(int(v))) - 1)
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if v <= step * mag:
            return step * mag
    return v


def line_chart(title: str, xs: Sequence[float], series: list[tuple[str, Sequence[float | None]]], unit: str,
               bars: bool = False, ymax: float | None = None, tz: timezone = timezone.utc,
               zone_name: str = "UTC", ymin: float | None = None) -> str:
    """An SVG chart of one or more series over time (None = gap; a point
    with no neighbour is drawn as a dot). The y axis starts at 0 (or
    below, for negative values) unless `ymin` is given."""
    if not xs:
        return f'<figure><figcaption>{html.escape(title)}</figcaption><p>No data.</p></figure>'
    values = [v for _, ys in series for v in ys if v is not None]
    vmin = ymin if ymin is not None else min(0.0, min(values, default=0.0))
    vmax = ymax if ymax is not None else _nice_max(max(values, default=1.0))
    x0, x1 = min(xs), max(xs)
    span = (x1 - x0) or 1.0
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(x: float) -> float:
        return PAD_L + (x - x0) / span * pw

    def py(y: float) -> float:
        return PAD_T + ph - (y - vmin) / ((vmax - vmin) or 1.0) * ph

    parts = [f'<svg class="time-chart" viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(title)}">']
    for i in range(5):
        y = vmin + (vmax - vmin) * i / 4
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{PAD_L - 6}" y="{py(y) + 4:.1f}" text-anchor="end" font-size="11">{y:,.0f}</text>')
    for t, label in _time_ticks(x0, x1, tz):
        parts.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{PAD_T + ph}" y2="{PAD_T + ph + 4}" stroke="#888"/>')
        # Labels near an edge are anchored inside the chart, not cut off.
        anchor = "end" if px(t) > W - PAD_R - 40 else "start" if px(t) < PAD_L + 20 else "middle"
        parts.append(f'<text class="x-tick" x="{px(t):.1f}" y="{PAD_T + ph + 16}" text-anchor="{anchor}" '
                     f'font-size="11">{html.escape(label)}</text>')
    parts.append(f'<text class="x-title" x="{PAD_L + pw / 2:.1f}" y="{H - 8}" text-anchor="middle" font-size="11" '
                 f'fill="#555">Local time ({html.escape(zone_name)})</text>')
    parts.append(f'<text x="{PAD_L}" y="{PAD_T - 8}" font-size="11" fill="#555">{html.escape(unit)}</text>')
    n = len(series)
    bar_w = max(0.6, pw / max(len(xs), 1) / max(n, 1) * 0.8)
    for k, (name, ys) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        if bars:
            for x, yb in zip(xs, ys):
                if yb is None:
                    continue
                top, base = py(max(yb, 0)), py(min(yb, 0))
                parts.append(f'<rect x="{px(x) + k * bar_w - n * bar_w / 2:.1f}" y="{top:.1f}" width="{bar_w:.1f}" '
                             f'height="{max(base - top, 0.5):.1f}" fill="{color}"/>')
        else:
            path, pen = [], "M"
            ys = list(ys)
            for i, (x, yl) in enumerate(zip(xs, ys)):
                if yl is None:
                    pen = "M"
                    continue
                path.append(f"{pen}{px(x):.1f},{py(yl):.1f}")
                alone = (i == 0 or ys[i - 1] is None) and (i == len(ys) - 1 or ys[i + 1] is None)
                if alone:  # a line needs two points: mark it
                    parts.append(f'<circle cx="{px(x):.1f}" cy="{py(yl):.1f}" r="2.5" fill="{color}"/>')
                pen = "L"
            if path:
                parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        parts.append(f'<rect x="{PAD_L + 10 + k * 200}" y="6" width="10" height="10" fill="{color}"/>'
                     f'<text x="{PAD_L + 24 + k * 200}" y="15" font-size="11">{html.escape(name)}</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}</figure>"


def _table(columns: Sequence[tuple[str, str]], rows: Iterable[dict[str, Any]]) -> str:
    rows = list(rows)
    if not rows:
        return "<p>None.</p>"
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(key)))}</td>" for key, _ in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def households(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per household: energy, money in and out, self-sufficiency, and the
    same energy at the utility's tariff alone."""
    tariff = data.get("tariff") or {}
    imp_t = float(tariff.get("import_sat_per_kwh", 0))
    exp_t = float(tariff.get("export_sat_per_kwh", 0))
    out = []
    for p in data.get("participants", []):
        g = lambda k: int(p.get(k) or 0)  # noqa: E731
        consumption = g("import_wh")
        net_cost = (g("utility_bill_sat") + g("grid_fee_sat") + g("p2p_paid_sat")
                    - g("p2p_received_sat") - g("utility_credit_sat"))
        utility_only = ((g("bought_wh") + g("utility_import_wh")) * imp_t
                        - (g("sold_wh") + g("utility_export_wh")) * exp_t) / 1000
        out.append({
            "name": p.get("coordinator", ""),
            "meters": g("meters"),
            "consumption_kwh": consumption / 1000,
            "bought_wh": g("bought_wh"), "sold_wh": g("sold_wh"),
            "utility_import_wh": g("utility_import_wh"), "utility_export_wh": g("utility_export_wh"),
            "paid": g("p2p_paid_sat"), "received": g("p2p_received_sat"), "grid_fee": g("grid_fee_sat"),
            "utility_bill": g("utility_bill_sat"), "utility_credit": g("utility_credit_sat"),
            "self_sufficiency": (round(100 * (consumption - g("utility_import_wh")) / consumption, 1)
                                 if consumption else None),
            "net_cost": net_cost, "utility_only": round(utility_only), "saved": round(utility_only - net_cost),
        })
    return out


HOUSEHOLD_ENERGY = [
    ("name", "Household"), ("meters", "Meters"), ("consumption_kwh", "Consumed (kWh)"),
    ("bought_wh", "Bought from neighbours (Wh)"), ("sold_wh", "Sold to neighbours (Wh)"),
    ("utility_import_wh", "From the utility (Wh)"), ("utility_export_wh", "To the utility (Wh)"),
    ("self_sufficiency", "Self-sufficiency (%)"),
]
HOUSEHOLD_MONEY = [
    ("name", "Household"), ("paid", "Paid to neighbours (sat)"), ("received", "Received from neighbours (sat)"),
    ("grid_fee", "Grid fees (sat)"), ("utility_bill", "Utility bill (sat)"), ("utility_credit", "Utility credit (sat)"),
    ("net_cost", "Net cost (sat)"), ("utility_only", "Utility only (sat)"), ("saved", "Saved by the market (sat)"),
]


GRID_NOMINAL_V = 230.0
GRID_DEFINITION = ("Each household is placed on a connection point of a benchmark low-voltage feeder "
                   "(pandapower's {network}); its metered net energy in each 15-minute interval is an average "
                   "power there, and an AC power flow gives the voltage at every connection point and the "
                   "loading of every cable and of the transformer. EN 50160 allows 207 to 253 V (230 V "
                   "+/- 10 %); cables and the transformer should stay at or below 100 % of their rating.")


def grid_section(data: dict[str, Any], chart: Any) -> str:
    """The feeder's power flow (microgrid/demo/grid.py), in words, a table and two charts."""
    grid = data.get("grid")
    if not grid:
        return ""
    if "error" in grid:
        return f"<h2>The feeder</h2><p>The power flow check could not run: {html.escape(str(grid['error']))}.</p>"
    s = grid.get("summary", {})
    volts = lambda pu: None if pu is None else round(pu * GRID_NOMINAL_V, 1)  # noqa: E731
    pct = lambda v: None if v is None else round(v, 1)  # noqa: E731
    rows = [
        ("Intervals checked", s.get("intervals")),
        ("Lowest voltage at a connection point (V)", volts(s.get("min_vm_pu"))),
        ("Highest voltage at a connection point (V)", volts(s.get("max_vm_pu"))),
        ("Highest cable loading (%)", pct(s.get("max_line_loading_percent"))),
        ("Highest transformer loading (%)", pct(s.get("max_trafo_loading_percent"))),
        ("Intervals with a voltage outside 207 to 253 V", s.get("intervals_with_voltage_violations")),
        ("Intervals with a cable or the transformer overloaded", s.get("intervals_with_overloads")),
        ("Intervals the power flow found no solution for", s.get("not_converged")),
    ]
    checks = grid.get("intervals", [])
    xs = [c["start"] for c in checks]
    charts = ""
    if xs:
        lowest = [volts(c["min_vm_pu"]) for c in checks]
        highest = [volts(c["max_vm_pu"]) for c in checks]
        seen = [v for v in lowest + highest if v is not None]
        # 200..260 V shows the allowed band (207..253 V) and what lies near it.
        charts = chart("Voltage on the feeder", xs, [("lowest", lowest), ("highest", highest)],
                       "V at the connection points", ymin=min([200.0] + seen), ymax=max([260.0] + seen)) + chart("Loading of the feeder", xs, [
            ("busiest cable", [pct(c["max_line_loading_percent"]) for c in checks]),
            ("transformer", [pct(c["max_trafo_loading_percent"]) for c in checks]),
        ], "% of rating")
    definition = GRID_DEFINITION.format(network=str(grid.get("network", "")).replace("_", " "))
    return (f"<h2>The feeder</h2>{_table([('what', 'Figure'), ('value', 'Value')], [{'what': w, 'value': v} for w, v in rows])}"
            f"<p class=\"note\">{html.escape(definition)}</p>{charts}")


def render_html(data: dict[str, Any]) -> str:
    tz, zone = _tz(data)
    intervals = data.get("intervals", [])
    xs = [iv["start"] for iv in intervals]

    def chart(title: str, xs: Sequence[float], series: list[tuple[str, Sequence[float | None]]], unit: str,
              **kw: Any) -> str:
        return line_chart(title, xs, series, unit, tz=tz, zone_name=zone, **kw)
    charts = [
        chart("Energy per 15-minute interval", xs, [
            ("generated", [iv.get("generation_wh") for iv in intervals]),
            ("consumed", [iv.get("consumption_wh") for iv in intervals]),
            ("traded between neighbours", [iv.get("traded_wh") for iv in intervals]),
        ], "Wh per interval", bars=len(xs) <= 200),
        chart("Market clearing price", xs, [("price", [iv.get("clearing_price") for iv in intervals])],
              "sat per kWh"),
        chart("Self-sufficiency of the street", xs, [
            ("self-sufficiency", [None if iv.get("self_sufficiency") is None else 100 * iv["self_sufficiency"]
                                  for iv in intervals]),
        ], "% of consumption met inside the street", ymax=100),
    ]
    for ch in data.get("channels", []):
        pts = ch.get("series", [])
        charts.append(chart(f"Payments {ch['name'].replace('->', 'to')}", [p[0] for p in pts],
                            [("paid so far", [p[1] for p in pts])],
                            f"sat paid in all (each channel holds up to {_cell(ch.get('capacity_sat'))} sat)"))
    summary = data.get("summary", {})
    params = data.get("params", {})
    summary_rows = [{"what": label, "value": summary[key]} for key, label in SUMMARY_LABELS if key in summary]
    incidents = [{"when": datetime.fromtimestamp(i["at"], tz).strftime("%d %b %Y %H:%M").lstrip("0") + f" {zone}",
                  "what": i["what"]} for i in summary.get("incidents", [])]
    param_rows = [{"what": PARAM_LABELS[k], "value": v} for k, v in params.items() if k in PARAM_LABELS]
    title = html.escape(str(data.get("title", "")))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Microgrid demo report</title>
<style>
@page {{ size: A4; margin: 14mm; }}
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 182mm; color: #222; font-size: 14px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 0.5em; font-size: 12px; break-inside: auto; }}
tr {{ break-inside: avoid; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; vertical-align: top; }}
th {{ background: #f4f4f4; font-weight: 600; }} td:first-child, th:first-child {{ text-align: left; }}
figure {{ margin: 1.2em 0; break-inside: avoid; }} figcaption {{ font-weight: 600; margin-bottom: 4px; }}
svg {{ width: 100%; height: auto; }}
p.note {{ font-size: 12px; color: #444; max-width: 170mm; }}
h2 {{ break-after: avoid; margin-top: 1.4em; }}
</style></head><body>
<h1>Microgrid demo report</h1>
<p>{title}. Times are the street's local time ({html.escape(zone)}).</p>
<h2>In short</h2>{_table([("what", "Figure"), ("value", "Value")], summary_rows)}
<h2>What happened on the way</h2>{_table([("when", "When"), ("what", "What")], incidents) if incidents else "<p>Nothing out of the ordinary was scripted for this run.</p>"}
<h2>Households: energy</h2>{_table(HOUSEHOLD_ENERGY, households(data))}
<h2>Households: money</h2>{_table(HOUSEHOLD_MONEY, households(data))}
<p class="note">{html.escape(HOUSEHOLD_DEFINITION)}</p>
<h2>Money, reconciled per seller</h2>{_table(MONEY_COLUMNS, data.get("money", []))}
<p class="note">{html.escape(MONEY_DEFINITION)}</p>
<h2>Charts</h2>{"".join(charts)}
{grid_section(data, chart)}
<h2>How the run was set up</h2>{_table([("what", "Setting"), ("value", "Value")], param_rows)}
<p class="note">All figures: <a href="report.json">report.json</a> beside this page.</p>
</body></html>
"""


def write_report(out_dir: str | Path, data: dict[str, Any]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str))
    page = out / "report.html"
    page.write_text(render_html(data))
    return page
