"""Who may read the coordinator's API: applications with credentials.

A request is authorised when either

- it came through a security context the coordinator trusts for
  applications: aiocoap gives an OSCORE (or DTLS) request's remote a list
  of `authenticated_claims`; each predicate registered with
  `Access.add_claim_check` (the OSCORE set-up registers its own) is asked
  about them; or
- it carries an application token in the **Microgrid-Token** option
  (CoAP option number 65002, from the experimental range of RFC 7252
  12.2: elective, unsafe to forward, so a proxy that does not know it
  does not pass it on) **and** it came over a protected path: loopback
  (a process on the appliance itself) or a secure scheme (coaps, coaps+tcp,
  coaps+ws). A token over plain CoAP from the network is refused even when
  right: anyone on the LAN could have read it.

Tokens are stored hashed (`[api] token_sha256`, SHA-256 in hex: tokens are
random 256-bit strings, so a fast hash suffices, no password stretching),
and compared with every stored hash in constant time.
`microgrid coordinator api-token` makes one and prints both.

Decisions only: a request's remote and options in, yes/no and a reason out.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Iterable

log = logging.getLogger("microgrid.ingest.access")

TOKEN_OPTION = 65002
SECURE_SCHEMES = frozenset({"coaps", "coaps+tcp", "coaps+ws"})


def new_token() -> tuple[str, str]:
    """A fresh application token and the SHA-256 hex to configure."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str | bytes) -> str:
    raw = token.encode() if isinstance(token, str) else bytes(token)
    return hashlib.sha256(raw).hexdigest()


def is_loopback(remote: Any) -> bool:
    sockaddr = getattr(remote, "sockaddr", None)
    if not sockaddr:
        return False
    try:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


@dataclass(frozen=True)
class Decision:
    allowed: bool
    why: str


class Access:
    def __init__(self, token_hashes: Iterable[str] = ()) -> None:
        self._hashes = [bytes.fromhex(h) for h in token_hashes]
        self._claim_checks: list[Callable[[Any], bool]] = []
        self.counts = {"allowed": 0, "refused": 0, "token_in_clear": 0}

    def add_claim_check(self, check: Callable[[Any], bool]) -> None:
        """`check(claim)` is true for an authenticated claim (e.g. an OSCORE
        security context) that may use the API."""
        self._claim_checks.append(check)

    def _token_ok(self, offered: bytes) -> bool:
        digest = hashlib.sha256(offered).digest()
        ok = False
        for known in self._hashes:  # every hash, no early exit
            ok |= hmac.compare_digest(digest, known)
        return ok

    def decide(self, request: Any) -> Decision:
        remote = request.remote
        claims = list(getattr(remote, "authenticated_claims", None) or [])
        # aiocoap's file-based OSCORE contexts carry no claims: the context
        # the request came through is the claim (coordinator/link names it).
        context = getattr(remote, "security_context", None)
        if context is not None:
            claims.append(context)
        if any(check(claim) for claim in claims for check in self._claim_checks):
            self.counts["allowed"] += 1
            return Decision(True, "authenticated security context")
        offered = [bytes(o.value) for o in request.opt.get_option(TOKEN_OPTION)]
        if not offered:
            self.counts["refused"] += 1
            return Decision(False, "credentials required: an OSCORE context for applications, or the "
                                   f"Microgrid-Token option ({TOKEN_OPTION}) over loopback or coaps")
        protected = bool(claims) or getattr(remote, "scheme", "") in SECURE_SCHEMES or is_loopback(remote)
        if not protected:
            self.counts["token_in_clear"] += 1
            log.warning("an API token came over plain CoAP from the network: refused; if it was a real one, "
                        "it may have been seen on the LAN: replace it (microgrid coordinator api-token)")
            return Decision(False, "token refused over plain CoAP from the network: use OSCORE or coaps")
        if len(offered) != 1 or not self._token_ok(offered[0]):
            self.counts["refused"] += 1
            return Decision(False, "token not accepted")
        self.counts["allowed"] += 1
        return Decision(True, "application token")


def installer_grant(installer_token: str) -> Callable[[Any], bool]:
    """True for a request whose Microgrid-Token option is the installer
    token (`[ingest] installer_token`; never when none is configured): lets
    `microgrid flash --check` read back a registration (GET /devices?id=)
    with the credential it registered with. It is protected as POST
    /devices is: the installer's own flow decides the transport."""
    expected = installer_token.encode()

    def check(request: Any) -> bool:
        if not expected:
            return False
        offered = [bytes(o.value) for o in request.opt.get_option(TOKEN_OPTION)]
        return len(offered) == 1 and hmac.compare_digest(offered[0], expected)

    return check
