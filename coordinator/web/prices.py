"""The Prices page's rules, turned into the market's price table, and a
preview of what they would have done in the last week's books.

A household picks, per side:
- "off": no orders on that side;
- "fixed": a price in sat/kWh;
- "tariff": follow the utility's tariff with a margin (selling: the export
  tariff plus the margin, the least the neighbours should beat; buying:
  the import tariff minus the margin, what makes buying locally worth it);
and a bound: selling never below a floor, buying never above a cap.

They become the `[market.prices]` table that market/pricing.py already
reads (`sell`, `buy`, `sell_floor_sat_per_kwh`), so the next order the
market service places carries them: nothing else learns a new rule. The
rules are kept in `prices.json` in the web state folder and applied again
at start (the tariff may have changed in the config meanwhile).

The preview takes the books this coordinator kept (store/books.py) and its
recent rounds, swaps each of our orders for the one the new rules would
have placed (same side and quantity, new limit), clears every book again
with the zone's rules (market/clearing.py, the same function the market
uses) and sums what we would have sold and bought, against what we did.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from bitcoinx import PrivateKey

from ..market.clearing import ClearingError, ZoneRules, clear_interval
from ..market.orders import BUY, MAX_PRICE_SAT_PER_KWH, SELL, SignedOrder, make_order
from ..market.pricing import PricingError, parse_policy
from ..market.settings import MarketSettings

MODES = ("off", "fixed", "tariff")
FILE = "prices.json"


class PriceRuleError(ValueError):
    """A field of the Prices form that cannot be taken; says which and why."""


@dataclass(frozen=True)
class SideRule:
    mode: str = "off"
    price: int = 0  # fixed
    margin: int = 0  # tariff
    bound: int | None = None  # sell: floor; buy: cap


@dataclass(frozen=True)
class PriceRules:
    sell: SideRule = SideRule()
    buy: SideRule = SideRule()

    def to_json(self) -> dict[str, Any]:
        return {side: {"mode": r.mode, "price": r.price, "margin": r.margin, "bound": r.bound}
                for side, r in (("sell", self.sell), ("buy", self.buy))}


def _int_field(form: Mapping[str, str], name: str, lo: int, hi: int, default: int | None) -> int | None:
    raw = str(form.get(name, "")).strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PriceRuleError(f"{name}: {raw[:20]!r} is not a whole number of sat/kWh") from None
    if not lo <= value <= hi:
        raise PriceRuleError(f"{name}: {value} is outside {lo}..{hi} sat/kWh")
    return value


def parse_form(form: Mapping[str, str]) -> PriceRules:
    """The Prices form (or prices.json's flat form) -> rules; every field
    checked, the first wrong one named."""
    sides = {}
    for side in ("sell", "buy"):
        mode = str(form.get(f"{side}_mode", "off"))
        if mode not in MODES:
            raise PriceRuleError(f"{side}_mode: {mode[:20]!r}; expected one of {', '.join(MODES)}")
        price = _int_field(form, f"{side}_price", 0, MAX_PRICE_SAT_PER_KWH, 0 if mode != "fixed" else None)
        if price is None:
            raise PriceRuleError(f"{side}_price: a fixed price needs a number")
        margin = _int_field(form, f"{side}_margin", -MAX_PRICE_SAT_PER_KWH, MAX_PRICE_SAT_PER_KWH, 0)
        bound = _int_field(form, f"{side}_bound", 0, MAX_PRICE_SAT_PER_KWH, None)
        sides[side] = SideRule(mode, price, margin or 0, bound)
    return PriceRules(sides["sell"], sides["buy"])


def from_json(raw: Mapping[str, Any]) -> PriceRules:
    flat: dict[str, str] = {}
    for side in ("sell", "buy"):
        r = raw.get(side) or {}
        for k in ("mode", "price", "margin", "bound"):
            v = r.get(k)
            flat[f"{side}_{k}"] = "" if v is None else str(v)
    return parse_form(flat)


def limits(rules: PriceRules, market: MarketSettings) -> tuple[int | None, int | None]:
    """(sell limit, buy limit) in sat/kWh the rules give with the current
    tariff, None for a side that is off. Raises PriceRuleError when a rule
    lands outside the prices an order may carry."""
    out: list[int | None] = []
    for side, rule, tariff, sign in (("sell", rules.sell, market.export_tariff_sat_per_kwh, 1),
                                     ("buy", rules.buy, market.import_tariff_sat_per_kwh, -1)):
        if rule.mode == "off":
            out.append(None)
            continue
        price = rule.price if rule.mode == "fixed" else tariff + sign * rule.margin
        if rule.bound is not None:
            price = max(price, rule.bound) if side == "sell" else min(price, rule.bound)
        if not 0 <= price <= MAX_PRICE_SAT_PER_KWH:
            raise PriceRuleError(f"{side}: the tariff {tariff} with margin {rule.margin} gives {price} sat/kWh; "
                                 f"expected 0..{MAX_PRICE_SAT_PER_KWH}")
        out.append(price)
    return out[0], out[1]


def price_table(rules: PriceRules, market: MarketSettings) -> dict[str, Any]:
    """The [market.prices] table with these rules, other keys (reserve,
    battery) kept as configured."""
    sell, buy = limits(rules, market)
    table = {k: v for k, v in market.prices.items() if k not in ("sell", "buy", "sell_floor_sat_per_kwh")}
    if sell is not None:
        table["sell"] = sell
        if rules.sell.bound is not None:
            table["sell_floor_sat_per_kwh"] = rules.sell.bound
    if buy is not None:
        table["buy"] = buy
    try:
        parse_policy(table)
    except PricingError as e:
        raise PriceRuleError(str(e)) from None
    return table


def apply(rules: PriceRules, market: MarketSettings) -> dict[str, Any]:
    """Set the market's prices: the next order placed carries them."""
    table = price_table(rules, market)
    market.prices = table
    return table


def save(folder: Path, rules: PriceRules) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = folder / (FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(rules.to_json(), f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / FILE)


def load(folder: Path) -> PriceRules | None:
    path = folder / FILE
    if not path.exists():
        return None
    try:
        return from_json(json.loads(path.read_text()))
    except (ValueError, AttributeError) as e:
        raise PriceRuleError(f"{path}: {e}; fix or remove it") from None


def current(market: MarketSettings) -> PriceRules:
    """The rules that describe the prices in force, for the form: fixed
    prices as "fixed", anything else (a time-of-day curve) as off here."""
    p = market.prices
    floor = p.get("sell_floor_sat_per_kwh")
    sell = SideRule("fixed", p["sell"], 0, floor) if isinstance(p.get("sell"), int) else SideRule()
    buy = SideRule("fixed", p["buy"]) if isinstance(p.get("buy"), int) else SideRule()
    return PriceRules(sell, buy)


# -- preview -------------------------------------------------------------------------


@dataclass
class Outcome:
    intervals: int = 0
    sold_wh: int = 0
    earned_msat: int = 0
    bought_wh: int = 0
    spent_msat: int = 0


def _ours(book: Iterable[SignedOrder], owner: bytes, rules: ZoneRules, zone: str, start: int, step: int) -> Outcome:
    cleared = clear_interval(book, zone, start, step, rules)
    out = Outcome(intervals=1)
    for t in cleared.trades:
        if t.seller == owner:
            out.sold_wh += t.wh
            out.earned_msat += t.msat
        if t.buyer == owner:
            out.bought_wh += t.wh
            out.spent_msat += t.msat + t.fee_msat
    return out


def preview(books: Iterable[tuple[str, int, int, list[SignedOrder]]], key: PrivateKey, rules: ZoneRules,
            sell: int | None, buy: int | None) -> tuple[Outcome, Outcome]:
    """(what happened, what the new limits would have done) over `books`
    (zone, interval start, length, orders). Our orders get the new limit,
    signed again with our key; a side turned off drops our orders on it."""
    owner = key.public_key.to_bytes(compressed=True)
    then, would = Outcome(), Outcome()
    for zone, start, step, orders in books:
        try:
            before = _ours(orders, owner, rules, zone, start, step)
        except ClearingError:
            continue
        swapped: list[SignedOrder] = []
        for so in orders:
            o = so.order
            if o.owner != owner:
                swapped.append(so)
                continue
            limit = sell if o.side == SELL else buy if o.side == BUY else None
            if limit is None:
                continue
            swapped.append(make_order(key, o.side, o.zone, o.interval_start, o.quantity_wh, limit, o.expires,
                                      o.nonce, o.created, o.interval_s))
        after = _ours(swapped, owner, rules, zone, start, step)
        for acc, one in ((then, before), (would, after)):
            acc.intervals += 1
            acc.sold_wh += one.sold_wh
            acc.earned_msat += one.earned_msat
            acc.bought_wh += one.bought_wh
            acc.spent_msat += one.spent_msat
    return then, would


__all__ = ["PriceRules", "SideRule", "PriceRuleError", "parse_form", "apply", "save", "load", "current", "preview",
           "limits", "price_table"]
