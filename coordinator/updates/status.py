"""The console's view of firmware updates (UpdateService.status)."""

from __future__ import annotations

from typing import Any


def console_text(st: dict[str, Any]) -> str:
    lines = [f"offered to meters: {st.get('offered') or 'nothing'} (window {st.get('window')})"]
    for h in st.get("held", []):
        lines.append(f"held {h['version']} for {h['board']} ({h['id']}): {h['chunks']} chunks")
    for version, f in st.get("fetching", {}).items():
        avoided = f" avoiding {', '.join(f['avoided'])}" if f["avoided"] else ""
        lines.append(f"fetching {version}: {f['missing']} chunks missing from {f['peers']} peers{avoided}")
    ro = st.get("rollout") or {}
    if ro.get("canary"):
        lines.append(f"staged rollout: {ro['canary']} meter(s) first, the rest once they confirmed")
    for v, why in (ro.get("halted") or {}).items():
        lines.append(f"rollout of {v} halted: {why}")
    for dev, m in sorted((ro.get("meters") or {}).items()):
        lines.append(f"meter {dev}: runs {m['version']}" + ("" if m["ok"] else f", rolled back from {m['tried']}: "
                                                                             f"{m['why']}"))
    lines.append(f"chunks fetched {st.get('chunks_fetched', 0)}, bad {st.get('bad_chunks', 0)}, "
                 f"errors {st.get('fetch_errors', 0)}; bytes served {st.get('bytes_served', 0)}; "
                 f"offers {st.get('offers', 0)}")
    return "\n".join(lines)
