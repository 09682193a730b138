"""What a Wh bought or sold in each slot is expected to cost or earn.

Three sources, combined per slot:
- the utility's tariff, import and export, each a price rule of
  market/pricing.py (a fixed price or a time-of-use curve in local time);
- the market's expected clearing price: the median of the prices at which
  the zone cleared at the same time of day over recent days (intervals
  without trades say nothing), else the median of all recent ones, else
  no market;
- the household's own rules ([market.prices]): the market is counted on
  for buying only with a buy rule whose limit then reaches the expected
  price plus the grid fee, and for selling only with a sell rule whose
  price (and floor) the expected price reaches; otherwise the order would
  not match, and the utility's tariff is what applies.

    buy_t  = min(import tariff, expected market + grid fee)  if the market counts
    sell_t = max(export tariff, expected market)              if the market counts
and sell_t never above buy_t (a peer paying more than the utility charges
would be no plan to count on).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..market.pricing import DAY_S, PriceRule, PricingPolicy, price_at

MARKET = "market"
TARIFF = "tariff"


def rule_series(rule: PriceRule, start: int, slot_s: int, slots: int, utc_offset_s: int = 0) -> list[int]:
    """The rule's price at the start of each slot."""
    return [price_at(rule, start + t * slot_s, utc_offset_s) for t in range(slots)]


def expected_market_prices(history: Iterable[tuple[int, int | None]], start: int, slot_s: int, slots: int,
                           days: int = 14) -> list[float | None]:
    """From (interval start, clearing price or None) of past intervals:
    per future slot, the median price at the same time of day over the
    `days` days before `start`; the median of all of them where a time of
    day has none; None everywhere without any."""
    since = start - days * DAY_S
    by_time: dict[int, list[int]] = {}
    every: list[int] = []
    for t, price in history:
        if price is None or not since <= t < start:
            continue
        by_time.setdefault(t % DAY_S, []).append(price)
        every.append(price)
    if not every:
        return [None] * slots
    overall = float(statistics.median(every))
    out: list[float | None] = []
    for i in range(slots):
        same = by_time.get((start + i * slot_s) % DAY_S)
        out.append(float(statistics.median(same)) if same else overall)
    return out


@dataclass(frozen=True)
class SlotPrices:
    buy: list[float]
    sell: list[float]
    source: list[str]  # "market+market", "tariff+market"...: buy side + sell side


def slot_prices(start: int, slot_s: int, import_tariff: Sequence[float], export_tariff: Sequence[float],
                market: Sequence[float | None], policy: PricingPolicy, grid_fee_sat_per_kwh: int = 0,
                utc_offset_s: int = 0) -> SlotPrices:
    """Combine the tariff, the expected market and the household's rules
    (module docstring)."""
    buy: list[float] = []
    sell: list[float] = []
    source: list[str] = []
    for i, (imp, exp, m) in enumerate(zip(import_tariff, export_tariff, market)):
        t = start + i * slot_s
        b, bs = float(imp), TARIFF
        s, ss = float(exp), TARIFF
        if m is not None:
            if policy.buy is not None and price_at(policy.buy, t, utc_offset_s) >= m + grid_fee_sat_per_kwh \
                    and m + grid_fee_sat_per_kwh < b:
                b, bs = m + grid_fee_sat_per_kwh, MARKET
            if policy.sell is not None and m >= max(price_at(policy.sell, t, utc_offset_s),
                                                    policy.sell_floor_sat_per_kwh) and m > s:
                s, ss = m, MARKET
        s = min(s, b)
        buy.append(b)
        sell.append(s)
        source.append(f"{bs}+{ss}")
    return SlotPrices(buy, sell, source)
