"""The [web] section: the household's web app (coordinator/web/).

    [web]
    enabled = true
    host = "127.0.0.1"          # bind address; "0.0.0.0" or the LAN address to serve the household's phones
    port = 8443
    tls = true                  # HTTPS with a certificate the appliance makes (web/tls.py)
    state_dir = "web"           # accounts, certificate, saved prices (beside the database)
    session_s = 43200           # a login lasts this long without use
    login_attempts = 5          # failed logins per source address ...
    login_window_s = 300        # ... per this window; then refused until it passes
    fiat_code = "EUR"           # shown beside satoshis
    fiat_per_btc = 0.0          # the rate; 0: satoshis only
    wallet_low_sat = 10000      # alert below this wallet balance
    channel_expiry_alert_s = 86400  # alert when a channel closes within this

The default binds loopback only: serving the LAN is a decision the
installer takes by setting `host`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any


class WebSettingsError(ValueError):
    """A [web] setting is missing, of the wrong type or out of range."""


_FIAT = re.compile(r"^[A-Z]{3}$")


@dataclass
class WebSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8443
    tls: bool = True
    state_dir: str = "web"
    session_s: int = 12 * 3600
    login_attempts: int = 5
    login_window_s: int = 300
    fiat_code: str = "EUR"
    fiat_per_btc: float = 0.0
    wallet_low_sat: int = 10_000
    channel_expiry_alert_s: int = 86_400

    def validate(self, section: str = "web") -> "WebSettings":
        for key in ("enabled", "tls"):
            if not isinstance(getattr(self, key), bool):
                raise WebSettingsError(f"{section}.{key}={getattr(self, key)!r}: expected true or false")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise WebSettingsError(f"{section}.host={self.host!r}: expected an IP address such as 127.0.0.1 "
                                   "(loopback only) or 0.0.0.0 (every interface)") from None
        _int(f"{section}.port", self.port, 0, 65535)
        if not isinstance(self.state_dir, str) or not self.state_dir:
            raise WebSettingsError(f"{section}.state_dir: expected a folder path")
        _int(f"{section}.session_s", self.session_s, 60, 30 * 86400)
        _int(f"{section}.login_attempts", self.login_attempts, 1, 1000)
        _int(f"{section}.login_window_s", self.login_window_s, 1, 86400)
        if not isinstance(self.fiat_code, str) or not _FIAT.match(self.fiat_code):
            raise WebSettingsError(f"{section}.fiat_code={self.fiat_code!r}: expected a currency code such as EUR")
        if isinstance(self.fiat_per_btc, bool) or not isinstance(self.fiat_per_btc, (int, float)) \
                or not 0 <= self.fiat_per_btc <= 1e9:
            raise WebSettingsError(f"{section}.fiat_per_btc={self.fiat_per_btc!r}: expected a number in 0..1e9 "
                                   "(0: show satoshis only)")
        _int(f"{section}.wallet_low_sat", self.wallet_low_sat, 0, 2_100_000_000_000_000)
        _int(f"{section}.channel_expiry_alert_s", self.channel_expiry_alert_s, 0, 365 * 86400)
        return self


def _int(key: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise WebSettingsError(f"{key}={value!r}: expected an integer in {lo}..{hi}")
