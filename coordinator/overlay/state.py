"""What a node keeps across restarts to rejoin quickly: its node id, its
port and the addresses of peers it knew. A JSON file written atomically;
a missing or damaged file means starting fresh, never failing to start."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("microgrid.overlay")

MAX_SAVED_PEERS = 64
_NODE_ID = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class OverlayState:
    node_id: str = ""  # 40 hex digits, "" to let the engine pick one
    port: int = 0
    peers: list[str] = field(default_factory=list)  # "host:port" / "[v6]:port"
    saved_at: float = 0.0


def load(path: str | Path) -> OverlayState:
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        return OverlayState()
    except (OSError, ValueError) as e:
        log.warning("overlay state %s unreadable (%s); starting fresh", p, e)
        return OverlayState()
    if not isinstance(raw, dict):
        log.warning("overlay state %s is not an object; starting fresh", p)
        return OverlayState()
    node_id = raw.get("node_id", "")
    port = raw.get("port", 0)
    peers = raw.get("peers", [])
    saved_at = raw.get("saved_at", 0.0)
    return OverlayState(
        node_id=node_id if isinstance(node_id, str) and _NODE_ID.match(node_id) else "",
        port=port if isinstance(port, int) and not isinstance(port, bool) and 0 <= port < 65536 else 0,
        peers=[x for x in peers if isinstance(x, str)][:MAX_SAVED_PEERS] if isinstance(peers, list) else [],
        saved_at=float(saved_at) if isinstance(saved_at, (int, float)) else 0.0,
    )


def save(path: str | Path, state: OverlayState) -> None:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    data = {"node_id": state.node_id, "port": state.port,
            "peers": state.peers[:MAX_SAVED_PEERS], "saved_at": state.saved_at}
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:
        log.warning("overlay state %s not saved: %s", p, e)
