"""The [grid] section of the coordinator's configuration.

Shaped like the other sections (a dataclass with defaults and
`validate(section)`); coordinator/config.py holds it as [grid], and the
appliance installs the limits in the market (Coordinator.refresh_network_limits):

    [grid]
    enabled = true
    network = "kerber_dorfnetz"        # a built-in benchmark, or a pandapower .json file
    utility = ["02ab..."]              # keys connected upstream of the transformer (the utility's orders)
    vmin_pu = 0.90                     # EN 50160: 230 V -10 %
    vmax_pu = 1.10                     #                 +10 %
    voltage_margin_pu = 0.01           # kept free for what the linear model does not know
    max_loading_percent = 100.0        # lines and transformer
    loading_margin_percent = 5.0

    [grid.connections]                 # only where the membership records do not say
    "03cd..." = "loadbus_1_3"          # coordinator key -> bus name

Members' connection points come from their membership records (the
roster); [grid.connections] adds or overrides places (a zone without
membership records, a test). Every coordinator of the zone must use the
same network, places and limits, or their cleared books differ (the
limits' digest is in each cleared interval and the hashes say so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from .limits import GridLimits
from .sensitivity import LimitSettings, SensitivityError


class GridSettingsError(ValueError):
    """A [grid] setting is wrong."""


def _key(hexkey: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(hexkey)
    except (TypeError, ValueError):
        key = b""
    if len(key) != 33 or key[0] not in (2, 3):
        raise GridSettingsError(f"{where}={hexkey!r}: expected a compressed public key (66 hex digits)")
    return key


@dataclass
class GridSettings:
    enabled: bool = False
    network: str = ""
    utility: list[str] = field(default_factory=list)
    vmin_pu: float = 0.90
    vmax_pu: float = 1.10
    voltage_margin_pu: float = 0.01
    max_loading_percent: float = 100.0
    loading_margin_percent: float = 5.0
    connections: dict[str, str] = field(default_factory=dict)

    def validate(self, section: str = "grid") -> "GridSettings":
        if not isinstance(self.enabled, bool):
            raise GridSettingsError(f"{section}.enabled={self.enabled!r}: expected true or false")
        if self.enabled and (not isinstance(self.network, str) or not self.network):
            raise GridSettingsError(f"{section}.network: expected a benchmark name or a pandapower .json file")
        if not isinstance(self.utility, list):
            raise GridSettingsError(f"{section}.utility: expected a list of keys")
        for k in self.utility:
            _key(k, f"{section}.utility")
        if not isinstance(self.connections, dict):
            raise GridSettingsError(f"{section}.connections: expected a table of key = bus name")
        for k, point in self.connections.items():
            _key(k, f"{section}.connections")
            if not isinstance(point, str) or not 0 < len(point.encode()) <= 64:
                raise GridSettingsError(f"{section}.connections.{k[:16]}={point!r}: expected a bus name")
        for name in ("vmin_pu", "vmax_pu", "voltage_margin_pu", "max_loading_percent", "loading_margin_percent"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise GridSettingsError(f"{section}.{name}={v!r}: expected a number")
        try:
            self.limit_settings()
        except SensitivityError as e:
            raise GridSettingsError(f"{section}: {e}") from None
        return self

    def limit_settings(self) -> LimitSettings:
        return LimitSettings(float(self.vmin_pu), float(self.vmax_pu), float(self.voltage_margin_pu),
                             float(self.max_loading_percent), float(self.loading_margin_percent))

    def limits(self, members: Iterable[Any] = ()) -> GridLimits | None:
        """The zone's GridLimits (None when disabled): the network with
        `members` (objects with `key` and `connection`, e.g. the roster's
        Member) placed, [grid.connections] on top. Computed once per
        network and placement (sensitivity.limits_for caches)."""
        if not self.enabled:
            return None
        from .model import from_members, load_network
        from .sensitivity import limits_for

        model = from_members(load_network(self.network), members,
                             [_key(k, "utility") for k in self.utility])
        placed = dict(model.members)
        placed.update((_key(k, "connections"), p) for k, p in self.connections.items())
        return limits_for(model.with_members(placed), self.limit_settings())
