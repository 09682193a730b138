"""The demo's report: one self-contained HTML page with SVG plots, plus the
JSON the page was drawn from. No plotting library: the charts are simple
and the page must open anywhere, offline, years from now.

Input (the `data` dict):
    summary       flat dict of headline figures (also printed and in --json)
    params        the options the run used
    intervals     list of {"start": unix s, "generation_wh", "consumption_wh",
                  "traded_wh", "clearing_price" (sat/kWh or None),
                  "self_sufficiency" (0..1 or None)}
    channels      list of {"name", "capacity_sat", "series": [[unix s, paid_sat], ...]}
    participants  list of flat dicts (one row per coordinator)
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 760, 270, 64, 16, 42, 40


def _fmt_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M")


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** len(str(int(v))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if v <= step * mag:
            return step * mag
    return v


def line_chart(title: str, xs: Sequence[float], series: list[tuple[str, Sequence[float | None]]], unit: str,
               bars: bool = False, ymax: float | None = None) -> str:
    """An SVG chart of one or more series over time (None = gap)."""
    if not xs:
        return f"<figure><figcaption>{html.escape(title)}</figcaption><p>no data</p></figure>"
    values = [v for _, ys in series for v in ys if v is not None]
    vmin = min(0.0, min(values, default=0.0))
    vmax = ymax if ymax is not None else _nice_max(max(values, default=1.0))
    x0, x1 = min(xs), max(xs)
    span = (x1 - x0) or 1.0
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(x: float) -> float:
        return PAD_L + (x - x0) / span * pw

    def py(y: float) -> float:
        return PAD_T + ph - (y - vmin) / ((vmax - vmin) or 1.0) * ph

    parts = [f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{html.escape(title)}">']
    for i in range(5):
        y = vmin + (vmax - vmin) * i / 4
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{PAD_L - 6}" y="{py(y) + 4:.1f}" text-anchor="end" font-size="11">{y:,.0f}</text>')
    for i in range(6):
        x = x0 + span * i / 5
        parts.append(f'<text x="{px(x):.1f}" y="{H - PAD_B + 16}" text-anchor="middle" font-size="11">{_fmt_time(x)}</text>')
    parts.append(f'<text x="{PAD_L}" y="{PAD_T - 8}" font-size="11" fill="#555">{html.escape(unit)}</text>')
    n = len(series)
    bar_w = max(1.0, pw / max(len(xs), 1) / max(n, 1) * 0.8)
    for k, (name, ys) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        if bars:
            for x, yb in zip(xs, ys):
                if yb is None:
                    continue
                y = yb
                top, base = py(max(y, 0)), py(min(y, 0))
                parts.append(f'<rect x="{px(x) + k * bar_w - n * bar_w / 2:.1f}" y="{top:.1f}" width="{bar_w:.1f}" '
                             f'height="{max(base - top, 0.5):.1f}" fill="{color}"/>')
        else:
            path, pen = [], "M"
            for x, yl in zip(xs, ys):
                if yl is None:
                    pen = "M"
                    continue
                path.append(f"{pen}{px(x):.1f},{py(yl):.1f}")
                pen = "L"
            parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<rect x="{PAD_L + 10 + k * 170}" y="6" width="10" height="10" fill="{color}"/>'
                     f'<text x="{PAD_L + 24 + k * 170}" y="15" font-size="11">{html.escape(name)}</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}</figure>"


def _table(rows: Iterable[dict[str, Any]]) -> str:
    rows = list(rows)
    if not rows:
        return "<p>none</p>"
    cols = list(rows[0].keys())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def render_html(data: dict[str, Any]) -> str:
    intervals = data.get("intervals", [])
    xs = [iv["start"] for iv in intervals]
    charts = [
        line_chart("Generation, consumption and energy traded per interval", xs, [
            ("generation", [iv.get("generation_wh") for iv in intervals]),
            ("consumption", [iv.get("consumption_wh") for iv in intervals]),
            ("traded", [iv.get("traded_wh") for iv in intervals]),
        ], "Wh per interval", bars=True),
        line_chart("Clearing price", xs, [("clearing price", [iv.get("clearing_price") for iv in intervals])], "sat/kWh"),
        line_chart("Self-sufficiency of the zone", xs, [
            ("self-sufficiency", [None if iv.get("self_sufficiency") is None else 100 * iv["self_sufficiency"] for iv in intervals]),
        ], "% of consumption met inside the zone", ymax=100),
    ]
    for ch in data.get("channels", []):
        pts = ch.get("series", [])
        charts.append(line_chart(f"Channel {ch['name']}: paid to payee", [p[0] for p in pts],
                                 [("paid", [p[1] for p in pts])], f"sat (capacity {ch.get('capacity_sat', '?')})"))
    summary = data.get("summary", {})
    params = data.get("params", {})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>microgrid demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 800px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f4f4f4; }} td:first-child, th:first-child {{ text-align: left; }}
figure {{ margin: 1.5em 0; }} figcaption {{ font-weight: 600; margin-bottom: 4px; }}
</style></head><body>
<h1>microgrid demo report</h1>
<p>{html.escape(str(data.get("title", "")))}</p>
<h2>Summary</h2>{_table([{"figure": k, "value": v} for k, v in summary.items()])}
<h2>Charts</h2>{"".join(charts)}
<h2>Participants</h2>{_table(data.get("participants", []))}
<h2>Run parameters</h2>{_table([{"option": k, "value": v} for k, v in params.items()])}
<p>Data: <a href="report.json">report.json</a></p>
</body></html>
"""


def write_report(out_dir: str | Path, data: dict[str, Any]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str))
    page = out / "report.html"
    page.write_text(render_html(data))
    return page
