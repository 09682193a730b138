"""Paying as energy arrives: the stream never runs ahead of what settlement
will say is owed while sellers deliver, and what it does run ahead (a
seller fell short) is counted against later intervals, never paid twice."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgrid.coordinator.market.clearing import Trade, ZoneRules, clear_interval
from microgrid.coordinator.market.orders import BUY, SELL
from microgrid.coordinator.market.settlement import P2P, Metered, Tariff, settle_interval
from microgrid.coordinator.trading.delivery import SellerAccounts, expected_streams, live_needed, streamed_due

from ..market.helpers import KEYS, START, order

PK = [k.public_key.to_bytes(compressed=True) for k in KEYS]
TARIFF = Tariff(250, 40)


def trade(buyer: int, seller: int, wh: int, price: int) -> Trade:
    return Trade(b"b", b"s", PK[buyer], PK[seller], wh, price, wh * price, 0)


def test_import_fills_the_trades_in_order_in_whole_increments() -> None:
    trades = [trade(0, 1, 25, 100), trade(0, 2, 40, 150), trade(3, 1, 99, 100)]  # the last is not ours
    assert all(d.sats == d.wh == 0 for d in streamed_due(trades, PK[0], 0, 10).values())
    due = streamed_due(trades, PK[0], 19, 10)
    assert (due[PK[1]].wh, due[PK[1]].sats, due[PK[2]].wh) == (10, 1, 0)
    due = streamed_due(trades, PK[0], 45, 10)  # 25 to the first trade (20 paid so far), 20 to the second
    assert (due[PK[1]].wh, due[PK[1]].sats) == (20, 2) and (due[PK[2]].wh, due[PK[2]].sats) == (20, 3)
    due = streamed_due(trades, PK[0], 10_000, 10)  # never beyond a trade's Wh
    assert (due[PK[1]].wh, due[PK[2]].wh) == (20, 40)


def test_bad_increment_and_accounts_are_refused() -> None:
    with pytest.raises(ValueError, match="increment"):
        streamed_due([], PK[0], 10, 0)
    with pytest.raises(ValueError, match="expected >= 0"):
        SellerAccounts().settle("s", -1)
    with pytest.raises(ValueError, match="expected >= 0"):
        SellerAccounts().add_signed("s", -1)


def test_a_shortfall_paid_ahead_counts_against_the_next_interval() -> None:
    acc = SellerAccounts()
    # Interval 1: we streamed 30 sat, the seller delivered only 20 sat worth.
    acc.add_signed("s", 30)
    assert acc.settle("s", 20) == 0 and acc.prepaid("s") == 10
    # Interval 2: 25 owed, 5 streamed in it: 10 prepaid + 5 leaves 10 to pay.
    acc.add_signed("s", 5)
    assert acc.settle("s", 25) == 10 == acc.unpaid("s")
    acc.add_signed("s", 10)
    assert acc.prepaid("s") == 0 == acc.unpaid("s") and acc.owed["s"] == 45


spec = st.tuples(st.sampled_from([BUY, SELL]), st.integers(1, 400), st.integers(1, 40), st.integers(0, 4))


@given(st.lists(spec, min_size=2, max_size=12), st.integers(0, 4), st.integers(0, 1500), st.integers(0, 1500),
       st.sampled_from([1, 5, 10, 25]))
@settings(max_examples=200, deadline=None)
def test_while_sellers_deliver_the_stream_never_exceeds_the_settlement(specs: list, who: int, running: int,
                                                                        extra: int, increment: int) -> None:
    book = [order(s, wh, p * 5, who=w, nonce=i) for i, (s, wh, p, w) in enumerate(specs)]
    cleared = clear_interval(book, "zone-a", START, 900, ZoneRules())
    buyer = PK[who]
    final = running + extra  # what the buyer's meters show at the end; `running` some time before
    # Every seller exports all it sold; the buyer imports `final`; others import what they bought.
    sold: dict[bytes, int] = {}
    bought: dict[bytes, int] = {}
    for t in cleared.trades:
        sold[t.seller] = sold.get(t.seller, 0) + t.wh
        bought[t.buyer] = bought.get(t.buyer, 0) + t.wh
    people = set(sold) | set(bought) | {buyer}
    metered = [Metered(p, sold.get(p, 0), final if p == buyer else bought.get(p, 0)) for p in people]
    s = settle_interval(cleared, metered, TARIFF)
    settled: dict[bytes, int] = {}
    for p in s.payments:
        if p.kind == P2P and p.payer == buyer.hex():
            settled[bytes.fromhex(p.payee)] = settled.get(bytes.fromhex(p.payee), 0) + p.sats
    earlier = streamed_due(cleared.trades, buyer, running, increment)
    later = streamed_due(cleared.trades, buyer, final, increment)
    for seller, due in later.items():
        assert due.sats <= settled.get(seller, 0)
        assert earlier[seller].sats <= due.sats and earlier[seller].wh <= due.wh  # only ever grows
        assert due.wh % increment == 0
    # Once the whole interval is in, at most one increment per trade is left
    # for settlement, plus the rounding: the stream rounds each seller's
    # exact msat down, settlement rounds each pair's up (< 1 sat each way).
    mine = [t for t in cleared.trades if t.buyer == buyer]
    if final >= sum(t.wh for t in mine):
        left = sum(settled.values()) - sum(d.sats for d in later.values())
        sellers = len({t.seller for t in mine})
        assert 0 <= left * 1000 <= sum(increment * t.price_sat_per_kwh for t in mine) + 2000 * sellers


def test_no_seller_is_paid_beyond_the_export_it_has_shown() -> None:
    trades = [trade(3, 1, 30, 100), trade(0, 1, 50, 100), trade(0, 2, 50, 100)]
    # Seller 1 has shown 60 Wh: its earlier trade to buyer 3 takes 30 first, we get 30.
    # Seller 2 has shown nothing yet: nothing to pay it, however much we imported.
    due = streamed_due(trades, PK[0], 100, 10, seller_export={PK[1]: 60})
    assert (due[PK[1]].wh, due[PK[1]].sats) == (30, 3) and due[PK[2]] == type(due[PK[2]])(0, 0)


meter = st.tuples(st.integers(0, 900), st.integers(0, 900), st.floats(0, 1), st.floats(0, 1))


@given(st.lists(spec, min_size=2, max_size=12), st.lists(meter, min_size=5, max_size=5), st.integers(0, 4),
       st.sampled_from([1, 10, 25]))
@settings(max_examples=300, deadline=None)
def test_capped_by_what_sellers_show_the_stream_stays_behind_the_settlement(specs: list, meters: list, who: int,
                                                                             increment: int) -> None:
    """Whatever every participant's meters show at the end, and any earlier
    point of them: what the buyer streamed by then is covered by settlement."""
    book = [order(s, wh, p * 5, who=w, nonce=i) for i, (s, wh, p, w) in enumerate(specs)]
    cleared = clear_interval(book, "zone-a", START, 900, ZoneRules())
    final = {PK[i]: (e, m) for i, (e, m, _, _) in enumerate(meters)}
    running = {PK[i]: (int(e * fe), int(m * fm)) for i, (e, m, fe, fm) in enumerate(meters)}
    s = settle_interval(cleared, [Metered(p, e, m) for p, (e, m) in final.items()], TARIFF)
    buyer = PK[who]
    settled: dict[str, int] = {}
    for p in s.payments:
        if p.kind == P2P and p.payer == buyer.hex():
            settled[p.payee] = settled.get(p.payee, 0) + p.sats
    due = streamed_due(cleared.trades, buyer, running[buyer][1], increment,
                       seller_export={p: e for p, (e, _) in running.items()})
    for seller, d in due.items():
        assert d.sats <= settled.get(seller.hex(), 0), (seller.hex()[:8], d, settled)


def test_console_lines_say_what_is_signed_owed_and_ahead() -> None:
    acc = SellerAccounts()
    for seller, signed in (("a" * 66, 100), ("b" * 66, 40), ("c" * 66, 7)):
        acc.add_signed(seller, signed)
    acc.settle("a" * 66, 100)
    acc.settle("b" * 66, 50)
    lines = acc.lines()
    assert lines == [
        f"paying {'a' * 16}: 100 sat signed, 100 sat owed by settlements (settled)",
        f"paying {'b' * 16}: 40 sat signed, 50 sat owed by settlements (10 sat still to pay)",
        f"paying {'c' * 16}: 7 sat signed, 0 sat owed by settlements (7 sat paid ahead)",
    ]


@given(st.lists(spec, min_size=2, max_size=12), st.lists(meter, min_size=5, max_size=5),
       st.sampled_from([1, 10, 25]), st.integers(0, 4))
@settings(max_examples=200, deadline=None)
def test_a_seller_expects_exactly_what_a_keeping_up_buyer_pays_and_no_more(specs: list, meters: list, increment: int,
                                                                         who: int) -> None:
    """From the same live records, the seller's expectation of each buyer
    is what that buyer's stream pays it: an honest buyer is never cut off,
    and a buyer that pays nothing is behind by all of it."""
    book = [order(s, wh, p * 5, who=w, nonce=i) for i, (s, wh, p, w) in enumerate(specs)]
    cleared = clear_interval(book, "zone-a", START, 900, ZoneRules())
    live = {PK[i]: (e, m) for i, (e, m, _, _) in enumerate(meters)}
    seller = PK[who]
    expected = expected_streams(cleared.trades, seller, live, increment)
    exports = {p: e for p, (e, _) in live.items()}
    assert seller not in expected  # matched against itself, it pays nobody
    for buyer in {t.buyer for t in cleared.trades if t.seller == seller} - {seller}:
        paid = streamed_due(cleared.trades, buyer, live[buyer][1], increment, exports).get(seller)
        assert expected.get(buyer, 0) == (paid.sats if paid else 0)
    # A buyer that has published nothing yet is expected to have paid nothing.
    quiet = {p: v for p, v in live.items() if p == seller}
    assert expected_streams(cleared.trades, seller, quiet, increment) == {}


@given(st.lists(spec, min_size=2, max_size=12), st.lists(meter, min_size=5, max_size=5),
       st.sampled_from([1, 10, 25]), st.integers(0, 4), st.integers(0, 1500))
@settings(max_examples=200, deadline=None)
def test_the_live_records_read_by_name_decide_exactly_what_all_of_them_do(specs: list, meters: list, increment: int,
                                                                         who: int, running: int) -> None:
    """A trader reads only live_needed's records (and knows its own): what
    it streams as a buyer and expects as a seller is what reading every
    trader's record gives."""
    book = [order(s, wh, p * 5, who=w, nonce=i) for i, (s, wh, p, w) in enumerate(specs)]
    cleared = clear_interval(book, "zone-a", START, 900, ZoneRules())
    live = {PK[i]: (e, m) for i, (e, m, _, _) in enumerate(meters)}
    me = PK[who]
    needed = live_needed(cleared.trades, me)
    assert me not in needed and needed <= {t.buyer for t in cleared.trades} | {t.seller for t in cleared.trades}
    some = {p: v for p, v in live.items() if p in needed or p == me}
    assert expected_streams(cleared.trades, me, some, increment) == expected_streams(cleared.trades, me, live, increment)
    exports = {p: e for p, (e, _) in live.items()}
    some_exports = {p: e for p, (e, _) in some.items()}
    assert (streamed_due(cleared.trades, me, running, increment, some_exports)
            == streamed_due(cleared.trades, me, running, increment, exports))
    if not any(me in (t.buyer, t.seller) for t in cleared.trades):
        assert needed == set()  # not trading: nothing to read
