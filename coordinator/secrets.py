"""Keeping secrets out of what is logged, shown and sent.

A password or token must never reach a log line, the console, an MQTT
topic or a peer: logs are shared when asking for help, the console is read
over a technician's shoulder, and a peer is a stranger. Settings hold
secrets in files (or the environment), not in values that get printed;
these helpers catch what slips through anyway.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

# A setting whose name contains one of these holds a secret (or says where
# one is), and is shown only as set or empty.
SECRET_WORDS = ("password", "token", "secret", "cookie", "passphrase", "private")


def is_secret_key(name: str) -> bool:
    n = name.lower()
    return any(w in n for w in SECRET_WORDS)


def split_userinfo(url: str) -> tuple[str, str, str]:
    """(url without user:password@, user, password) of an http(s) URL."""
    p = urllib.parse.urlsplit(url)
    if p.username is None and p.password is None:
        return url, "", ""
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{p.port}" if p.port is not None else "")
    clean = urllib.parse.urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment))
    return clean, urllib.parse.unquote(p.username or ""), urllib.parse.unquote(p.password or "")


def redact_url(text: str) -> str:
    """`text` with any user:password@ of a URL in it replaced by ***@."""
    out = []
    for word in text.split(" "):
        if "://" in word and "@" in word.split("://", 1)[1].split("/", 1)[0]:
            scheme, rest = word.split("://", 1)
            word = f"{scheme}://***@{rest.split('@', 1)[1]}"
        out.append(word)
    return " ".join(out)


def redact(value: Any, key: str = "") -> Any:
    """A settings value fit to show: secrets as "(set)"/"(empty)", URLs
    without their credentials, nested tables likewise."""
    if key and is_secret_key(key):
        return "(set)" if value else "(empty)"
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_url(value)
    return value


def write_new_secret_file(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to a new file readable by its owner only (mode 0600 from
    the start, never a moment world-readable). An existing file raises
    FileExistsError: a key that is overwritten is lost for good."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
