"""Users' prices, turned into orders. Pure functions: a household's policy,
its forecast and battery state in; order terms out.

A user sets, through config or the console:
- a price rule for selling and one for buying, each either a fixed price
  or a curve by time of day (step function over local time);
- a battery reserve and a floor: "sell surplus above a 2 kWh reserve at no
  less than 100 sat/kWh".

Config (TOML; the console takes the same table as JSON):

    [market.prices]
    sell = { time_of_day = { "00:00" = 80, "17:00" = 200, "21:00" = 80 } }
    buy = 150                      # fixed; leave out to never buy
    reserve_wh = 2000              # never discharge below this to sell
    sell_floor_sat_per_kwh = 100   # never sell below this
    sell_from_battery = true       # offer stored energy above the reserve

Planning one interval (`plan_interval`), all in Wh for that interval:
    surplus = generation - consumption
    surplus > 0: first fill the battery up to the reserve (within its charge
      rate and room); offer the rest for sale, plus, with sell_from_battery,
      what is stored above the reserve (within the discharge rate).
    surplus < 0: cover the deficit from storage above the reserve (within
      the discharge rate); bid for the rest.
Sell limit = max(sell rule's price then, floor); buy limit = buy rule's
price then. No rule for a side: no order on that side.

Time of day is local time: the caller passes the UTC offset in force at the
interval (from zoneinfo, so daylight saving is the caller's business).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Union

from bitcoinx import PrivateKey

from .orders import BUY, DEFAULT_INTERVAL_S, MAX_PRICE_SAT_PER_KWH, SELL, SignedOrder, make_order

DAY_S = 86_400
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class PricingError(ValueError):
    """A price rule or policy that makes no sense; says the field, the
    value, and what was expected."""


@dataclass(frozen=True)
class FixedPrice:
    sat_per_kwh: int

    def __post_init__(self) -> None:
        _check_price("price", self.sat_per_kwh)


@dataclass(frozen=True)
class TimeOfDayPrice:
    """Steps (minute of the local day, sat/kWh), sorted by minute; each
    price holds from its minute until the next step's, the last one wrapping
    round midnight to the first."""

    steps: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise PricingError("time_of_day=(): expected at least one step")
        minutes = [m for m, _ in self.steps]
        if minutes != sorted(set(minutes)) or not all(0 <= m < 1440 for m in minutes):
            raise PricingError(f"time_of_day minutes {minutes}: expected distinct, sorted, in 0..1439")
        for m, p in self.steps:
            _check_price(f"time_of_day[{m // 60:02d}:{m % 60:02d}]", p)


PriceRule = Union[FixedPrice, TimeOfDayPrice]


def _check_price(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PRICE_SAT_PER_KWH:
        raise PricingError(f"{name}={value!r}: expected an integer sat/kWh in 0..{MAX_PRICE_SAT_PER_KWH}")


def price_at(rule: PriceRule, t: int, utc_offset_s: int = 0) -> int:
    """The rule's price at unix time `t` (local time = t + utc_offset_s)."""
    if isinstance(rule, FixedPrice):
        return rule.sat_per_kwh
    minute = ((t + utc_offset_s) % DAY_S) // 60
    price = rule.steps[-1][1]  # before the first step: yesterday's last
    for m, p in rule.steps:
        if m > minute:
            break
        price = p
    return price


@dataclass(frozen=True)
class PricingPolicy:
    sell: PriceRule | None = None
    buy: PriceRule | None = None
    reserve_wh: int = 0
    sell_floor_sat_per_kwh: int = 0
    sell_from_battery: bool = True
    min_order_wh: int = 1  # smaller quantities are not worth an order

    def __post_init__(self) -> None:
        for name in ("reserve_wh", "min_order_wh"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise PricingError(f"{name}={v!r}: expected an integer >= 0")
        _check_price("sell_floor_sat_per_kwh", self.sell_floor_sat_per_kwh)


@dataclass(frozen=True)
class Forecast:
    """What a household expects in one interval."""

    interval_start: int
    generation_wh: int
    consumption_wh: int


@dataclass(frozen=True)
class Battery:
    stored_wh: int
    capacity_wh: int
    max_charge_wh: int  # per interval
    max_discharge_wh: int  # per interval


@dataclass(frozen=True)
class OrderPlan:
    side: str
    quantity_wh: int
    limit_sat_per_kwh: int


def plan_interval(policy: PricingPolicy, forecast: Forecast, battery: Battery | None = None,
                  utc_offset_s: int = 0) -> list[OrderPlan]:
    """The orders a household should place for one interval (at most one
    per side; sell first)."""
    surplus = forecast.generation_wh - forecast.consumption_wh
    stored = battery.stored_wh if battery else 0
    room = min(battery.capacity_wh - stored, battery.max_charge_wh) if battery else 0
    above_reserve = max(0, stored - policy.reserve_wh)
    can_discharge = min(above_reserve, battery.max_discharge_wh) if battery else 0
    sell_wh = buy_wh = 0
    if surplus >= 0:
        to_reserve = max(0, min(surplus, policy.reserve_wh - stored, room))
        sell_wh = surplus - to_reserve + (can_discharge if policy.sell_from_battery else 0)
    else:
        buy_wh = -surplus - min(-surplus, can_discharge)
    plans = []
    t = forecast.interval_start
    if policy.sell is not None and sell_wh >= max(1, policy.min_order_wh):
        plans.append(OrderPlan(SELL, sell_wh, max(price_at(policy.sell, t, utc_offset_s),
                                                  policy.sell_floor_sat_per_kwh)))
    if policy.buy is not None and buy_wh >= max(1, policy.min_order_wh):
        plans.append(OrderPlan(BUY, buy_wh, price_at(policy.buy, t, utc_offset_s)))
    return plans


def sign_plans(plans: list[OrderPlan], key: PrivateKey, zone: str, interval_start: int, created: int,
               expires: int, first_nonce: int, interval_s: int = DEFAULT_INTERVAL_S) -> list[SignedOrder]:
    """Turn plans into signed orders, nonces first_nonce, first_nonce + 1..."""
    return [make_order(key, p.side, zone, interval_start, p.quantity_wh, p.limit_sat_per_kwh, expires,
                       first_nonce + i, created, interval_s) for i, p in enumerate(plans)]


# -- config -------------------------------------------------------------------


def parse_rule(name: str, value: Any) -> PriceRule | None:
    """An int is a fixed price; {"time_of_day": {"HH:MM": price, ...}} a
    curve; None (or absent) no rule."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        _check_price(name, value)
        return FixedPrice(value)
    if isinstance(value, Mapping) and set(value) == {"fixed"}:
        return parse_rule(name, value["fixed"])
    if isinstance(value, Mapping) and set(value) == {"time_of_day"} and isinstance(value["time_of_day"], Mapping):
        steps = []
        for hhmm, price in value["time_of_day"].items():
            m = _HHMM.match(hhmm) if isinstance(hhmm, str) else None
            if not m:
                raise PricingError(f"{name}.time_of_day key {hhmm!r}: expected \"HH:MM\"")
            _check_price(f"{name}.time_of_day[{hhmm}]", price)
            steps.append((int(m.group(1)) * 60 + int(m.group(2)), price))
        return TimeOfDayPrice(tuple(sorted(steps)))
    raise PricingError(f"{name}={value!r}: expected a price (int sat/kWh), {{fixed = N}} or"
                       " {time_of_day = {\"HH:MM\" = N, ...}}")


POLICY_KEYS = ("sell", "buy", "reserve_wh", "sell_floor_sat_per_kwh", "sell_from_battery", "min_order_wh")


def parse_policy(table: Mapping[str, Any]) -> PricingPolicy:
    """The [market.prices] table (or the console's JSON) -> PricingPolicy."""
    unknown = set(table) - set(POLICY_KEYS)
    if unknown:
        raise PricingError(f"market.prices keys {sorted(unknown)}: expected some of {list(POLICY_KEYS)}")
    sfb = table.get("sell_from_battery", True)
    if not isinstance(sfb, bool):
        raise PricingError(f"sell_from_battery={sfb!r}: expected true or false")
    return PricingPolicy(sell=parse_rule("sell", table.get("sell")), buy=parse_rule("buy", table.get("buy")),
                         reserve_wh=table.get("reserve_wh", 0),
                         sell_floor_sat_per_kwh=table.get("sell_floor_sat_per_kwh", 0),
                         sell_from_battery=sfb, min_order_wh=table.get("min_order_wh", 1))
