"""The plan's grid exchange in one slot -> the household's orders for it,
within the rules the household chose ([market.prices], market/pricing.py).

    sell  quantity: the planned export (without sell_from_battery, only its
          part not drawn from the battery); limit: the sell rule's price
          then, never below the floor nor below the export tariff (the
          utility pays that anyway);
    buy   quantity: the planned import; limit: the buy rule's price then,
          never above the import tariff (buying from peers for more than
          the utility charges, grid fee included in the limit, is a loss).
No rule for a side: no order on that side, as today. A quantity below the
rule's min_order_wh is not offered. What the market does not fill the
utility does, at the tariff the plan already counted with.
"""

from __future__ import annotations

import math

from ..market.orders import BUY, SELL
from ..market.pricing import OrderPlan, PricingPolicy, price_at
from .model import Plan


def plan_orders(plan: Plan, slot: int, policy: PricingPolicy, import_tariff: float, export_tariff: float,
                utc_offset_s: int = 0) -> list[OrderPlan]:
    """At most one order per side for `slot` of `plan`, sell first (as
    market/pricing.py's plan_interval)."""
    t = plan.inputs.start + slot * plan.inputs.slot_s
    export = plan.export_wh[slot]
    if not policy.sell_from_battery:
        export = max(0.0, export - plan.discharge_wh[slot])
    sell_wh = int(math.floor(export + 1e-6))
    buy_wh = int(math.ceil(plan.import_wh[slot] - 1e-6))
    least = max(1, policy.min_order_wh)
    out = []
    if policy.sell is not None and sell_wh >= least:
        limit = max(price_at(policy.sell, t, utc_offset_s), policy.sell_floor_sat_per_kwh,
                    int(math.ceil(export_tariff)))
        out.append(OrderPlan(SELL, sell_wh, limit))
    if policy.buy is not None and buy_wh >= least:
        limit = min(price_at(policy.buy, t, utc_offset_s), int(math.floor(import_tariff)))
        if limit >= 0:
            out.append(OrderPlan(BUY, buy_wh, limit))
    return out
