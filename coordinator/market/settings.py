"""The [market] section of the coordinator's configuration.

Shaped like the sections in coordinator/config.py (a dataclass with defaults
and `validate(section)`), so the config loader can adopt it as is:

    [market]
    enabled = true
    zone = "elm-street"                # 1..32 of [a-z0-9._-]
    interval_s = 900                   # 300, 900, 1800 or 3600
    gate_lead_s = 300                  # the book closes this long before the interval
    order_lead_s = 3600                # orders are placed this long ahead
    feeder_capacity_w = 25000          # the zone's feeder limit; 0: no limit
    min_order_wh = 1                   # smaller orders are listed, never matched
    grid_fee_sat_per_kwh = 5           # paid by buyers to the operator
    pricing = "pay-as-clear"           # or "pay-as-bid"
    operator = "elm-street-feeder"     # payee of grid fees
    import_tariff_sat_per_kwh = 250    # the utility's price for energy bought
    export_tariff_sat_per_kwh = 40     # the utility's price for energy sold to it
    utc_offset_s = 3600                # local time for time-of-day prices
    round_records = false              # zones at scale: orders ride with the meter total (rounds.py)

    [market.prices]                    # this household's prices (pricing.py)
    sell = { time_of_day = { "00:00" = 80, "17:00" = 200, "21:00" = 80 } }
    buy = 150
    reserve_wh = 2000
    sell_floor_sat_per_kwh = 100

Every coordinator of a zone must use the same interval_s, feeder capacity,
grid fee, pricing and minimum order size, or their cleared books differ
(and the hashes say so).

The feeder limit in Wh per interval is feeder_capacity_w * interval_s /
3600 rounded UP: a small but non-zero limit (1 W over 15 min is 0.25 Wh)
becomes 1 Wh, never 0 Wh (which would stop all trading).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .clearing import DEFAULT_MIN_ORDER_WH, PRICING, ClearingError, ZoneRules
from .orders import INTERVAL_LENGTHS_S, ZONE_RE
from .pricing import PricingError, PricingPolicy, parse_policy
from .settlement import SettlementError, Tariff


class MarketSettingsError(ValueError):
    """A [market] setting is missing, of the wrong type or out of range."""


@dataclass
class MarketSettings:
    enabled: bool = False
    zone: str = ""
    interval_s: int = 900
    gate_lead_s: int = 300
    order_lead_s: int = 3600
    feeder_capacity_w: int = 0
    min_order_wh: int = DEFAULT_MIN_ORDER_WH
    grid_fee_sat_per_kwh: int = 0
    pricing: str = "pay-as-clear"
    operator: str = "operator"
    import_tariff_sat_per_kwh: int = 250
    export_tariff_sat_per_kwh: int = 40
    utc_offset_s: int = 0
    prices: dict[str, Any] = field(default_factory=dict)
    # One overlay record per household and interval (market/rounds.py):
    # the meter total of the interval that ended and the orders for the one
    # two intervals on, instead of a record per order and one per meter
    # total. The same on every coordinator of the zone.
    round_records: bool = False

    def validate(self, section: str = "market") -> "MarketSettings":
        def need_int(name: str, lo: int, hi: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise MarketSettingsError(f"{section}.{name}={v!r}: expected an integer in {lo}..{hi}")

        if not isinstance(self.enabled, bool):
            raise MarketSettingsError(f"{section}.enabled={self.enabled!r}: expected true or false")
        if self.enabled or self.zone:
            if not isinstance(self.zone, str) or not ZONE_RE.match(self.zone):
                raise MarketSettingsError(f"{section}.zone={self.zone!r}: expected 1..32 characters of [a-z0-9._-]")
        if self.interval_s not in INTERVAL_LENGTHS_S:
            raise MarketSettingsError(f"{section}.interval_s={self.interval_s!r}: expected one of {INTERVAL_LENGTHS_S}")
        need_int("gate_lead_s", 0, 86_400)
        need_int("order_lead_s", 0, 86_400)
        if self.order_lead_s <= self.gate_lead_s:
            raise MarketSettingsError(f"{section}.order_lead_s={self.order_lead_s}: expected more than"
                                      f" gate_lead_s={self.gate_lead_s} (orders must be out before the gate closes)")
        if not isinstance(self.round_records, bool):
            raise MarketSettingsError(f"{section}.round_records={self.round_records!r}: expected true or false")
        if self.round_records and not (self.gate_lead_s < self.interval_s <= self.order_lead_s):
            raise MarketSettingsError(
                f"{section}.round_records: expected gate_lead_s ({self.gate_lead_s}) < interval_s ({self.interval_s}) "
                f"<= order_lead_s ({self.order_lead_s}): the orders for an interval ride in the records published "
                "after the interval two before it ends, and must be planned by then and in before the gate")
        need_int("feeder_capacity_w", 0, 10**9)
        need_int("min_order_wh", 1, 10**6)
        need_int("utc_offset_s", -14 * 3600, 14 * 3600)
        if self.pricing not in PRICING:
            raise MarketSettingsError(f"{section}.pricing={self.pricing!r}: expected one of {PRICING}")
        if not isinstance(self.operator, str) or not 0 < len(self.operator) <= 64:
            raise MarketSettingsError(f"{section}.operator={self.operator!r}: expected a name of 1..64 characters")
        if not isinstance(self.prices, dict):
            raise MarketSettingsError(f"{section}.prices: expected a table, got {type(self.prices).__name__}")
        try:
            self.rules()
            self.tariff()
        except (ClearingError, SettlementError) as e:
            raise MarketSettingsError(f"{section}: {e}") from None
        try:
            self.policy()
        except PricingError as e:
            raise MarketSettingsError(f"{section}.prices: {e}") from None
        return self

    # The feeder's network limits (coordinator/grid GridLimits) when [grid]
    # is enabled: not a setting (no TOML key) but computed from the network
    # model and the roster at run time, and installed by the appliance with
    # use_network(), so every clearing this settings object rules sees them.
    _network: ClassVar[Any] = None  # per instance once use_network() sets it

    def use_network(self, limits: Any) -> None:
        setattr(self, "_network", limits)  # an instance attribute over the class's None

    def rules(self) -> ZoneRules:
        cap = None if self.feeder_capacity_w == 0 else -(-self.feeder_capacity_w * self.interval_s // 3600)
        return ZoneRules(capacity_wh=cap, grid_fee_sat_per_kwh=self.grid_fee_sat_per_kwh, pricing=self.pricing,
                         min_order_wh=self.min_order_wh, network=self._network)

    def tariff(self) -> Tariff:
        return Tariff(self.import_tariff_sat_per_kwh, self.export_tariff_sat_per_kwh)

    def policy(self) -> PricingPolicy:
        return parse_policy(self.prices)
