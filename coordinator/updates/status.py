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
    lines.append(f"chunks fetched {st.get('chunks_fetched', 0)}, bad {st.get('bad_chunks', 0)}, "
                 f"errors {st.get('fetch_errors', 0)}; bytes served {st.get('bytes_served', 0)}; "
                 f"offers {st.get('offers', 0)}")
    return "\n".join(lines)
