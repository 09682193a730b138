"""Who may use the web app: accounts, the first-run code, sessions, and
the login rate limit. Decisions and storage only; no HTTP here.

- Accounts live in `accounts.json` in the web state folder (mode 0600):
  name -> role and an scrypt hash (memory-hard: 16 MiB per guess, so a
  stolen file is slow to attack on GPUs; Python's hashlib has it, no new
  dependency). Roles: "household" (prices, money, withdrawal, relays) and
  "technician" (devices and relays, not money).
- First run: with no account yet, a one-time set-up code is made at start
  and shown on the console (`web`) and in the log. Whoever holds it creates
  the household account; the code then stops working.
- Sessions are random 256-bit ids in memory (a restart logs everyone out),
  each with its own CSRF token; they lapse after `session_s` unused.
- Login attempts: at most `attempts` failures per source address in
  `window_s`, and ten times that from all addresses together (slows a
  guesser with many addresses); a refused attempt is not even checked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("microgrid.web.accounts")

HOUSEHOLD = "household"
TECHNICIAN = "technician"
ROLES = (HOUSEHOLD, TECHNICIAN)

# scrypt: N=2^14, r=8 -> 128 * N * r = 16 MiB of memory per hash.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
MIN_PASSWORD = 10
_NAME = re.compile(r"^[a-z0-9_.-]{1,32}$")


class AccountError(ValueError):
    """A name, role or password that cannot be taken; says why."""


def hash_password(password: str, salt: bytes, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + (1 << 20), dklen=32)


@dataclass(frozen=True)
class Session:
    sid: str
    user: str
    role: str
    csrf: str
    expires: float


class Accounts:
    def __init__(self, folder: Path, clock: Callable[[], float] = time.time, session_s: int = 12 * 3600) -> None:
        self.folder = folder
        self.path = folder / "accounts.json"
        self.clock = clock
        self.session_s = session_s
        self.users: dict[str, dict[str, object]] = {}
        self.sessions: dict[str, Session] = {}
        self._setup_code: str | None = None
        if self.path.exists():
            try:
                self.users = json.loads(self.path.read_text())["users"]
            except (ValueError, KeyError, TypeError):
                raise AccountError(f"{self.path} is not an accounts file; restore it from backup or remove it "
                                   "to set up again") from None

    # -- first run ------------------------------------------------------------------

    def needs_setup(self) -> bool:
        return not self.users

    def setup_code(self) -> str | None:
        """The one-time code while no account exists (made on first ask)."""
        if not self.needs_setup():
            return None
        if self._setup_code is None:
            # 10 characters from 32: 50 bits, and login's rate limit applies.
            alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
            self._setup_code = "".join(secrets.choice(alphabet) for _ in range(10))
        return self._setup_code

    def check_setup_code(self, offered: str) -> bool:
        code = self.setup_code()
        cleaned = offered.strip().upper().replace("-", "").replace(" ", "")
        return code is not None and hmac.compare_digest(cleaned.encode(), code.encode())

    # -- accounts ---------------------------------------------------------------------

    def add(self, name: str, password: str, role: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise AccountError("name: expected 1..32 of a-z 0-9 _ . -")
        if role not in ROLES:
            raise AccountError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        if name in self.users:
            raise AccountError(f"an account {name!r} exists already")
        check_password(password)
        salt = os.urandom(16)
        self.users[name] = {"role": role, "salt": salt.hex(), "hash": hash_password(password, salt).hex(),
                            "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}
        self._save()
        self._setup_code = None
        log.info("web account %r (%s) created", name, role)

    def verify(self, name: str, password: str) -> str | None:
        """The account's role if the password is right, else None. An
        unknown name costs a hash too, so timing does not tell names."""
        u = self.users.get(name)
        if u is None:
            hash_password(password, b"\0" * 16)
            return None
        got = hash_password(password, bytes.fromhex(str(u["salt"])), _int(u["n"]), _int(u["r"]), _int(u["p"]))
        if not hmac.compare_digest(got, bytes.fromhex(str(u["hash"]))):
            return None
        return str(u["role"])

    def _save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"users": self.users}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # -- sessions -----------------------------------------------------------------------

    def open_session(self, name: str, role: str) -> Session:
        s = Session(secrets.token_urlsafe(32), name, role, secrets.token_urlsafe(32), self.clock() + self.session_s)
        self.sessions[s.sid] = s
        return s

    def session(self, sid: str | None) -> Session | None:
        """The live session for a cookie's id, its lapse moved on; None for
        an unknown or lapsed one."""
        if not sid:
            return None
        s = self.sessions.get(sid)
        now = self.clock()
        if s is None:
            return None
        if s.expires <= now:
            del self.sessions[sid]
            return None
        s = Session(s.sid, s.user, s.role, s.csrf, now + self.session_s)
        self.sessions[sid] = s
        return s

    def close_session(self, sid: str | None) -> None:
        if sid:
            self.sessions.pop(sid, None)


def _int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise AccountError(f"accounts file: {v!r} is not a whole number")
    return v


def check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise AccountError(f"password: expected at least {MIN_PASSWORD} characters")
    if len(password) > 256:
        raise AccountError("password: expected at most 256 characters")


class LoginLimiter:
    """Failed logins per source address in a sliding window, and all
    sources together (ten times the per-address number)."""

    def __init__(self, attempts: int, window_s: float, clock: Callable[[], float] = time.time,
                 max_sources: int = 4096) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.clock = clock
        self.max_sources = max_sources
        self.failures: dict[str, deque[float]] = {}
        self.all_failures: deque[float] = deque()
        self.refused = 0

    def _trim(self, q: deque[float], now: float) -> None:
        while q and q[0] <= now - self.window_s:
            q.popleft()

    def allowed(self, source: str) -> bool:
        now = self.clock()
        q = self.failures.get(source)
        if q is not None:
            self._trim(q, now)
        self._trim(self.all_failures, now)
        ok = (q is None or len(q) < self.attempts) and len(self.all_failures) < 10 * self.attempts
        if not ok:
            self.refused += 1
        return ok

    def failed(self, source: str) -> None:
        now = self.clock()
        if source not in self.failures and len(self.failures) >= self.max_sources:
            # Forget the quietest source rather than grow without bound.
            oldest = min(self.failures, key=lambda k: self.failures[k][-1] if self.failures[k] else 0.0)
            del self.failures[oldest]
        self.failures.setdefault(source, deque()).append(now)
        self.all_failures.append(now)

    def succeeded(self, source: str) -> None:
        self.failures.pop(source, None)
