"""The [overlay] section of the coordinator's configuration.

Shaped like the sections in coordinator/config.py (a dataclass with defaults
and `validate(section)`), so the config loader can adopt it as is:

    [overlay]
    network_id = 1296520260          # private network: never mixes with others
    port = 4222                      # UDP, both families
    bind4 = "0.0.0.0"
    bind6 = "::"                     # "" disables IPv6 (then listens cannot stop)
    bootstrap = ["192.0.2.10:4222", "[2001:db8::1]:4222"]
    lan_discovery = false            # multicast peer discovery on the LAN
    state_path = "overlay-state.json"
    peer_rate_limit = 0              # requests/s per IP; 0: OpenDHT default, -1: none
    shards = 1                       # keys per per-interval name (keys.py): the same in a whole zone
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

# "MGRD": the default private network id of microgrid overlays.
DEFAULT_NETWORK_ID = 0x4D475244


class OverlaySettingsError(ValueError):
    """An [overlay] setting is missing, of the wrong type or out of range."""


def parse_endpoint(text: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port). Raises ValueError."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected host:port or [ipv6]:port with a port in 1..65535")
    return host, int(port)


@dataclass
class OverlaySettings:
    enabled: bool = False
    network_id: int = DEFAULT_NETWORK_ID
    port: int = 4222
    bind4: str = "0.0.0.0"
    bind6: str = "::"
    bootstrap: list[str] = field(default_factory=list)
    lan_discovery: bool = False
    # Known peers and our node id, saved to rejoin quickly after a restart
    # ("" keeps nothing).
    state_path: str = ""
    state_save_s: float = 60.0
    # OpenDHT counts requests per source IP. Every node on one host shares
    # an IP, so simulations on loopback must lift it (-1); in the field one
    # coordinator is one IP and the default (0) applies.
    peer_rate_limit: int = 0
    rate_limit: int = 0
    # Storing nodes hand their values on when the closest nodes change, and
    # a stopping node hands over what it stores (stop() then takes up to
    # stop_timeout_s when the peers it hands to are gone). Off, a stop looks
    # to the others exactly like a crash: no message is sent on leaving.
    maintain_storage: bool = True
    # Per-interval data (orders, results, metering, live totals) is spread
    # over this many keys per zone (keys.py, SPEC.md): 1 up to a few
    # hundred households, then about one per 150 households. Every
    # coordinator of a zone must use the same count.
    shards: int = 1
    get_timeout_s: float = 5.0
    put_timeout_s: float = 10.0
    stop_timeout_s: float = 5.0

    def validate(self, section: str = "overlay") -> "OverlaySettings":
        if isinstance(self.network_id, bool) or not isinstance(self.network_id, int) or not 1 <= self.network_id < 2**32:
            raise OverlaySettingsError(f"{section}.network_id={self.network_id!r}: expected an integer in 1..{2**32 - 1} "
                                       "(0 is OpenDHT's public network)")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise OverlaySettingsError(f"{section}.port={self.port!r}: expected an integer in 0..65535")
        for name, fam in (("bind4", 4), ("bind6", 6)):
            value = getattr(self, name)
            if name == "bind6" and value == "":
                continue
            try:
                ok = ipaddress.ip_address(value).version == fam
            except ValueError:
                ok = False
            if not ok:
                raise OverlaySettingsError(f"{section}.{name}={value!r}: expected an IPv{fam} address")
        if not isinstance(self.bootstrap, list):
            raise OverlaySettingsError(f"{section}.bootstrap={self.bootstrap!r}: expected a list of host:port")
        for entry in self.bootstrap:
            try:
                parse_endpoint(entry)
            except (ValueError, AttributeError) as e:
                raise OverlaySettingsError(f"{section}.bootstrap entry {e}") from None
        for name in ("peer_rate_limit", "rate_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise OverlaySettingsError(f"{section}.{name}={value!r}: expected -1 (no limit), 0 (default) or a rate")
        if isinstance(self.shards, bool) or not isinstance(self.shards, int) or not 1 <= self.shards <= 4096:
            raise OverlaySettingsError(f"{section}.shards={self.shards!r}: expected an integer in 1..4096, "
                                       "the same on every coordinator of the zone")
        for name in ("state_save_s", "get_timeout_s", "put_timeout_s", "stop_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
                raise OverlaySettingsError(f"{section}.{name}={value!r}: expected seconds in (0, 3600]")
        return self

    @classmethod
    def loopback(cls, **overrides: object) -> "OverlaySettings":
        """Settings for simulations and tests: loopback only, any free port,
        no LAN discovery, no per-IP rate limit (all nodes share 127.0.0.1)."""
        base = dict(enabled=True, port=0, bind4="127.0.0.1", bind6="::1", lan_discovery=False,
                    peer_rate_limit=-1, rate_limit=-1)
        base.update(overrides)
        return cls(**base).validate()  # type: ignore[arg-type]
