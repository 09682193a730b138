"""Properties of the network-aware walk on hand-made integer limits (no
power flow: fast, and the limits can be anything, counterflows included)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from microgrid.coordinator.grid.limits import SCALE, GridLimits, GridLimitsError
from microgrid.coordinator.market.clearing import ZoneRules, clear_interval
from tests.market.helpers import KEYS, START, order

PK = [k.public_key.to_bytes() for k in KEYS]


def limits_of(seed: int, rows: int, nodes: int, placed: int, tight: bool) -> GridLimits:
    rnd = random.Random(seed)
    budgets = tuple(rnd.randint(0, SCALE) if tight else SCALE * 10**6 for _ in range(rows))
    columns = tuple(tuple(0 for _ in range(rows)) if n == 0 else
                    tuple(rnd.randint(-2 * 10**7, 10**8) for _ in range(rows)) for n in range(nodes))
    owners = tuple(sorted((PK[i], rnd.randrange(nodes)) for i in range(placed)))
    return GridLimits(owners, tuple(f"n{n}" for n in range(nodes)), tuple(f"r{k}" for k in range(rows)),
                      budgets, columns)


books = st.lists(st.tuples(st.sampled_from(["buy", "sell"]), st.integers(1, 40_000), st.integers(1, 300),
                           st.integers(0, 9)), min_size=1, max_size=14)


@settings(max_examples=60, deadline=None)
@given(book=books, seed=st.integers(0, 2**32), rows=st.integers(1, 6), nodes=st.integers(1, 5),
       placed=st.integers(6, 10), cap=st.one_of(st.none(), st.integers(0, 60_000)), fee=st.integers(0, 20),
       pricing=st.sampled_from(["pay-as-clear", "pay-as-bid"]), interval_s=st.sampled_from([300, 900, 3600]))
def test_trades_stay_inside_every_row_and_every_limit_price(book, seed, rows, nodes, placed, cap, fee, pricing,
                                                            interval_s) -> None:  # type: ignore[no-untyped-def]
    limits = limits_of(seed, rows, nodes, placed, tight=True)
    orders = [order(side, wh, price, who=who, nonce=n, start=START - START % interval_s, interval_s=interval_s,
                    expires=START + 3600)
              for n, (side, wh, price, who) in enumerate(book)]
    start = START - START % interval_s
    rules = ZoneRules(capacity_wh=cap, grid_fee_sat_per_kwh=fee, pricing=pricing, network=limits)
    c = clear_interval(orders, "zone-a", start, interval_s, rules)
    by_hash = {o.hash: o.order for o in orders}
    injected: dict[int, int] = {}
    for t in c.trades:
        b, s = by_hash[t.buy], by_hash[t.sell]
        assert t.wh > 0
        assert s.limit_sat_per_kwh <= t.price_sat_per_kwh <= b.limit_sat_per_kwh - fee  # individually rational
        injected[limits.node_of[t.seller]] = injected.get(limits.node_of[t.seller], 0) + t.wh
        injected[limits.node_of[t.buyer]] = injected.get(limits.node_of[t.buyer], 0) - t.wh
    assert all(left >= 0 for left, b in zip(limits.use(injected, interval_s), limits.budgets) if b >= 0)
    assert cap is None or c.volume_wh <= cap
    for o in orders:
        assert 0 <= c.fills[o.hash] <= o.order.quantity_wh
    assert sum(c.fills[o.hash] for o in orders if o.order.side == "buy") == c.volume_wh
    assert sum(c.fills[o.hash] for o in orders if o.order.side == "sell") == c.volume_wh
    assert clear_interval(list(reversed(orders)), "zone-a", start, interval_s, rules).hash == c.hash


@settings(max_examples=40, deadline=None)
@given(book=books, seed=st.integers(0, 2**32), cap=st.one_of(st.none(), st.integers(0, 60_000)),
       fee=st.integers(0, 20), pricing=st.sampled_from(["pay-as-clear", "pay-as-bid"]))
def test_limits_that_never_bind_give_the_plain_clearing(book, seed, cap, fee, pricing) -> None:  # type: ignore[no-untyped-def]
    limits = limits_of(seed, 3, 4, 10, tight=False)
    orders = [order(side, wh, price, who=who, nonce=n) for n, (side, wh, price, who) in enumerate(book)]
    plain = clear_interval(orders, "zone-a", START, 900, ZoneRules(cap, fee, pricing))
    net = clear_interval(orders, "zone-a", START, 900, ZoneRules(cap, fee, pricing, network=limits))
    assert (net.trades, net.price_sat_per_kwh, net.binding, net.pairs) == \
        (plain.trades, plain.price_sat_per_kwh, plain.binding, plain.pairs)


def test_malformed_limits_are_refused() -> None:
    good = limits_of(1, 2, 2, 3, tight=True)
    for bad in (
        dict(names=("r0",)),
        dict(columns=good.columns[:1]),
        dict(columns=((0, 0), (1.5, 2))),
        dict(owners=tuple(reversed(good.owners))),
        dict(owners=((PK[0], 7),)),
        dict(budgets=(1, 2.0)),
    ):
        fields = dict(owners=good.owners, nodes=good.nodes, names=good.names, budgets=good.budgets,
                      columns=good.columns)
        fields.update(bad)
        try:
            GridLimits(**fields)  # type: ignore[arg-type]
        except GridLimitsError:
            continue
        raise AssertionError(f"accepted {bad}")


def test_zero_feeder_capacity_trades_nothing_even_at_one_node() -> None:
    limits = GridLimits(((PK[0], 1), (PK[1], 1)), ("grid", "n1"), ("r0",), (SCALE,), ((0,), (10**6,)))
    book = [order("sell", 100, 10, who=0), order("buy", 100, 50, who=1)]
    assert clear_interval(book, "zone-a", START, 900, ZoneRules(capacity_wh=0, network=limits)).trades == ()
    c = clear_interval(book, "zone-a", START, 900, ZoneRules(capacity_wh=60, network=limits))
    assert [t.wh for t in c.trades] == [60] and c.binding and c.price_sat_per_kwh == 50


def test_when_the_wires_split_the_market_each_pair_gets_its_own_price() -> None:
    # Row 0 stops anything from node 2 to node 1; trades within a node are free.
    limits = GridLimits(tuple(sorted(((PK[0], 1), (PK[1], 2), (PK[2], 2), (PK[3], 1)))), ("grid", "n1", "n2"),
                        ("r0",), (0,),
                        ((0,), (0,), (10**6,)))
    b1, b2 = order("buy", 1000, 200, who=0), order("buy", 1000, 100, who=1)
    s1, s2 = order("sell", 1000, 50, who=2), order("sell", 1000, 150, who=3)
    c = clear_interval([b1, b2, s1, s2], "zone-a", START, 900, ZoneRules(network=limits))
    got = {(t.buy, t.sell): (t.wh, t.price_sat_per_kwh) for t in c.trades}
    # The cheap seller could not reach the high bidder: a dearer one served it.
    assert got == {(b1.hash, s2.hash): (1000, 175), (b2.hash, s1.hash): (1000, 75)}
    assert c.binding and c.price_sat_per_kwh == 125  # the volume-weighted mean, an indication only
    # Without the network one uniform price: the cheap seller meets the high bidder.
    free = clear_interval([b1, b2, s1, s2], "zone-a", START, 900, ZoneRules())
    assert {(t.buy, t.sell) for t in free.trades} == {(b1.hash, s1.hash)} and free.price_sat_per_kwh == 125
