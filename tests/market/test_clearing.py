"""Clearing: the double auction's properties, and agreement with a simple
reference written here independently (one Wh at a time)."""

from __future__ import annotations

import logging
import random
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgrid.coordinator.market.clearing import (
    PAY_AS_BID, PAY_AS_CLEAR, ClearingError, ZoneRules, book_hash, clear_book, clear_interval, compare_books,
)
from microgrid.coordinator.market.orders import BUY, SELL, SignedOrder

from .helpers import CREATED, START, order


@lru_cache(maxsize=None)
def cached(side: str, wh: int, price: int, who: int, nonce: int, created: int) -> SignedOrder:
    return order(side, wh, price, who=who, nonce=nonce, created=created)


spec = st.tuples(st.sampled_from([BUY, SELL]), st.integers(1, 300), st.integers(0, 60), st.integers(0, 11),
                 st.integers(0, 3))
books = st.lists(spec, max_size=24).map(
    lambda specs: [cached(s, wh, p * 5, w, i, CREATED + c) for i, (s, wh, p, w, c) in enumerate(specs)])
rules_st = st.builds(ZoneRules, capacity_wh=st.one_of(st.none(), st.integers(0, 2000)),
                     grid_fee_sat_per_kwh=st.sampled_from([0, 0, 7, 40]),
                     pricing=st.sampled_from([PAY_AS_CLEAR, PAY_AS_BID]), min_order_wh=st.sampled_from([1, 1, 1, 40]))


def clear(orders: list[SignedOrder], rules: ZoneRules = ZoneRules()):  # type: ignore[no-untyped-def]
    return clear_interval(orders, "zone-a", START, 900, rules)


def reference(orders: list[SignedOrder], rules: ZoneRules) -> tuple[list[tuple[bytes, bytes, int, int]], int | None]:
    """Expand every order into single Wh in priority order; the n-th
    bought Wh meets the n-th sold Wh while the buyer (net of the fee) bids
    at least the seller's ask and the feeder has room. The uniform price is
    found by trying every integer price against the definition of the
    market-clearing interval: every matched Wh is content with it, no
    unmatched bought Wh bids above it, and (unless the feeder limit is what
    stopped trade) no unmatched sold Wh asks below it; the price is the
    midpoint of the prices that pass, rounded down."""
    fee = rules.grid_fee_sat_per_kwh
    uniq = [o for o in {o.hash: o for o in orders}.values() if o.order.quantity_wh >= rules.min_order_wh]
    buys = sorted((o for o in uniq if o.side == BUY),
                  key=lambda o: (-(o.order.limit_sat_per_kwh - fee), o.order.created, o.hash))
    sells = sorted((o for o in uniq if o.side == SELL),
                   key=lambda o: (o.order.limit_sat_per_kwh, o.order.created, o.hash))
    bu = [b for b in buys for _ in range(b.order.quantity_wh)]
    su = [s for s in sells for _ in range(s.order.quantity_wh)]

    def bid(k: int) -> int:
        return bu[k].order.limit_sat_per_kwh - fee

    def ask(k: int) -> int:
        return su[k].order.limit_sat_per_kwh

    free = 0
    while free < len(bu) and free < len(su) and bid(free) >= ask(free):
        free += 1
    n = free if rules.capacity_wh is None else min(free, rules.capacity_wh)
    if n == 0:
        return [], None
    binding = n < free
    ok = [p for p in range(0, 301)
          if all(bid(k) >= p >= ask(k) for k in range(n))
          and all(bid(k) <= p for k in range(n, len(bu)))
          and (binding or all(ask(k) >= p for k in range(n, len(su))))]
    assert ok and ok == list(range(ok[0], ok[-1] + 1)), "the clearing interval is one unbroken range"
    clearing = (ok[0] + ok[-1]) // 2
    trades: list[tuple[bytes, bytes, int, int]] = []
    for k in range(n):
        b, s = bu[k], su[k]
        price = clearing if rules.pricing == PAY_AS_CLEAR else (bid(k) + ask(k)) // 2
        if trades and trades[-1][:2] == (b.hash, s.hash):
            trades[-1] = (b.hash, s.hash, trades[-1][2] + 1, price)
        else:
            trades.append((b.hash, s.hash, 1, price))
    return trades, clearing


@given(books, rules_st)
@settings(max_examples=250, deadline=None)
def test_clearing_equals_the_one_wh_at_a_time_reference(book: list[SignedOrder], rules: ZoneRules) -> None:
    got = clear(book, rules)
    trades, price = reference(book, rules)
    assert [(t.buy, t.sell, t.wh, t.price_sat_per_kwh) for t in got.trades] == trades
    assert got.price_sat_per_kwh == price


@given(books, rules_st)
@settings(max_examples=250, deadline=None)
def test_no_trade_breaks_a_limit_a_quantity_or_the_feeder_and_money_follows_the_rounding_rule(
        book: list[SignedOrder], rules: ZoneRules) -> None:
    got = clear(book, rules)
    by_hash = {o.hash: o.order for o in book}
    fee = rules.grid_fee_sat_per_kwh
    bought: dict[bytes, int] = {}
    sold: dict[bytes, int] = {}
    for t in got.trades:
        b, s = by_hash[t.buy], by_hash[t.sell]
        assert b.side == BUY and s.side == SELL
        assert t.wh > 0
        assert t.price_sat_per_kwh + fee <= b.limit_sat_per_kwh, "buyer paid above its limit"
        assert t.price_sat_per_kwh >= s.limit_sat_per_kwh, "seller sold below its limit"
        assert t.msat == t.wh * t.price_sat_per_kwh
        assert t.fee_msat == t.wh * fee
        assert (t.buyer, t.seller) == (b.owner, s.owner)
        bought[t.buy] = bought.get(t.buy, 0) + t.wh
        sold[t.sell] = sold.get(t.sell, 0) + t.wh
    for h, wh in {**bought, **sold}.items():
        assert wh <= by_hash[h].quantity_wh
        assert got.fills[h] == wh
    assert sum(bought.values()) == sum(sold.values()) == got.volume_wh
    if rules.capacity_wh is not None:
        assert got.volume_wh <= rules.capacity_wh
    if rules.pricing == PAY_AS_CLEAR:
        assert {t.price_sat_per_kwh for t in got.trades} <= {got.price_sat_per_kwh}
    # Money per pair: the exact msat of its trades, rounded up once.
    pairs: dict[tuple[bytes, bytes], list[int]] = {}
    for t in got.trades:
        acc = pairs.setdefault((t.buyer, t.seller), [0, 0])
        acc[0] += t.wh
        acc[1] += t.msat
    assert [(p.buyer, p.seller, p.wh, p.msat, p.sats) for p in got.pairs] == \
        [(b, s, w, m, -(-m // 1000)) for (b, s), (w, m) in sorted(pairs.items())]


@given(books, rules_st, st.randoms(use_true_random=False))
@settings(max_examples=150, deadline=None)
def test_arrival_order_and_repeats_do_not_change_the_bytes(book: list[SignedOrder], rules: ZoneRules,
                                                           rnd: random.Random) -> None:
    shuffled = book + rnd.sample(book, k=len(book) // 2)
    rnd.shuffle(shuffled)
    a, b = clear(book, rules), clear(shuffled, rules)
    assert a.encoded == b.encoded and a.hash == b.hash


@given(books, rules_st)
@settings(max_examples=250, deadline=None)
def test_volume_is_the_most_any_single_price_could_trade_and_all_of_it_trades_at_the_clearing_price(
        book: list[SignedOrder], rules: ZoneRules) -> None:
    got = clear(book, rules)
    fee = rules.grid_fee_sat_per_kwh
    cap = rules.capacity_wh if rules.capacity_wh is not None else 10**12

    book = [o for o in {o.hash: o for o in book}.values() if o.order.quantity_wh >= rules.min_order_wh]

    def volume_at(p: int) -> int:
        demand = sum(o.order.quantity_wh for o in book if o.side == BUY and o.order.limit_sat_per_kwh - fee >= p)
        supply = sum(o.order.quantity_wh for o in book if o.side == SELL and o.order.limit_sat_per_kwh <= p)
        return min(demand, supply, cap)

    prices = {o.order.limit_sat_per_kwh for o in book} | {o.order.limit_sat_per_kwh - fee for o in book}
    best = max((volume_at(p) for p in prices), default=0)
    assert got.volume_wh == best
    if got.price_sat_per_kwh is not None:
        assert volume_at(got.price_sat_per_kwh) == got.volume_wh


def test_worked_example_pay_as_clear() -> None:
    b1, b2 = order(BUY, 1000, 150, who=1), order(BUY, 500, 100, who=2)
    s1, s2 = order(SELL, 800, 60, who=3), order(SELL, 1000, 120, who=4)
    got = clear([b1, b2, s1, s2])
    # b1 meets s1 for 800 Wh, then s2 for 200 Wh; b2 (100) < s2 (120): stop.
    assert [(t.buy, t.sell, t.wh) for t in got.trades] == [(b1.hash, s1.hash, 800), (b1.hash, s2.hash, 200)]
    # s2 is partly filled: its 120 is both an accepted and a rejected ask,
    # so the interval is [max(120, b2's 100), min(150, 120)] = [120, 120].
    assert got.price_sat_per_kwh == 120
    assert [t.msat for t in got.trades] == [96_000, 24_000]
    assert {(p.seller, p.wh, p.sats) for p in got.pairs} == {(s1.owner, 800, 96), (s2.owner, 200, 24)}
    assert got.fills[b2.hash] == 0 and got.fills[s2.hash] == 200


def test_worked_example_pay_as_bid_with_fee_and_feeder_limit() -> None:
    b1 = order(BUY, 1000, 150, who=1)
    s1, s2 = order(SELL, 800, 60, who=3), order(SELL, 1000, 120, who=4)
    got = clear([b1, s1, s2], ZoneRules(capacity_wh=900, grid_fee_sat_per_kwh=10, pricing=PAY_AS_BID))
    assert [(t.wh, t.price_sat_per_kwh, t.msat, t.fee_msat) for t in got.trades] == [
        (800, (140 + 60) // 2, 80_000, 8_000), (100, (140 + 120) // 2, 13_000, 1_000)]
    assert got.binding  # b1 wanted 100 Wh more from s2 (130 >= 120)
    assert got.volume_wh == 900


def test_ties_go_to_the_earlier_order_then_the_lower_hash() -> None:
    early = order(SELL, 100, 50, who=1, created=CREATED)
    late = order(SELL, 100, 50, who=2, created=CREATED + 5)
    buyer = order(BUY, 100, 80, who=3)
    assert clear([late, buyer, early]).trades[0].sell == early.hash
    x, y = order(SELL, 100, 50, who=4), order(SELL, 100, 50, who=5)
    low = min(x, y, key=lambda o: o.hash)
    assert clear([x, y, buyer]).trades[0].sell == low.hash


def test_an_empty_or_one_sided_book_clears_to_nothing() -> None:
    for book in ([], [order(BUY, 10, 5)], [order(SELL, 10, 5)], [order(BUY, 10, 5), order(SELL, 10, 6, who=1)]):
        got = clear(book)
        assert got.trades == () and got.volume_wh == 0 and got.price_sat_per_kwh is None


def test_buyer_below_the_grid_fee_cannot_trade() -> None:
    got = clear([order(BUY, 10, 5), order(SELL, 10, 0, who=1)], ZoneRules(grid_fee_sat_per_kwh=6))
    assert got.volume_wh == 0


def test_order_of_another_interval_is_refused() -> None:
    with pytest.raises(ClearingError, match="expected zone-a"):
        clear([order(BUY, 10, 5, zone="zone-b")])


@pytest.mark.parametrize("kw,match", [({"capacity_wh": -1}, "capacity_wh"), ({"grid_fee_sat_per_kwh": 1.5}, "fee"),
                                      ({"pricing": "vickrey"}, "pricing")])
def test_bad_zone_rules_are_refused(kw: dict, match: str) -> None:
    with pytest.raises(ClearingError, match=match):
        ZoneRules(**kw)


def test_clear_book_groups_by_zone_and_interval_with_each_zones_rules() -> None:
    a = [order(BUY, 100, 90, who=1, zone="zone-a"), order(SELL, 100, 10, who=2, zone="zone-a")]
    b = [order(BUY, 100, 90, who=1, zone="zone-b"), order(SELL, 100, 10, who=2, zone="zone-b")]
    got = clear_book(b + a, {"zone-b": ZoneRules(capacity_wh=40)})
    assert [(c.zone, c.volume_wh) for c in got] == [("zone-a", 100), ("zone-b", 40)]
    assert book_hash(got) == book_hash(list(reversed(got)))


def test_different_order_sets_give_different_hashes_and_the_disagreement_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    base = [order(BUY, 100, 90, who=1), order(SELL, 100, 10, who=2)]
    extra = order(BUY, 5, 1, who=3)  # cannot trade, but was seen by one side only
    ours, theirs = clear(base), clear(base + [extra])
    assert ours.trades == theirs.trades and ours.hash != theirs.hash
    with caplog.at_level(logging.WARNING, logger="microgrid.market.clearing"):
        cmp = compare_books(ours, {"peer-a": ours.hash, "peer-b": theirs.hash},
                            {"peer-b": list(theirs.order_hashes)})
    assert cmp.agree == ("peer-a",) and not cmp.unanimous
    assert cmp.disagree[0].peer == "peer-b" and cmp.disagree[0].missing_here == (extra.hash,)
    assert cmp.disagree[0].missing_there == ()
    assert "disagrees with peer peer-b" in caplog.text
