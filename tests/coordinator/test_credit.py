"""A seller opens its export relay while a buyer owes more than the credit,
and closes it once every buyer has paid: on the settled intervals, and
during an interval on what each buyer's stream should have reached."""

from __future__ import annotations

import pytest

from microgrid.coordinator.devices.gpio import Relay, SimulatedGpio
from microgrid.coordinator.trading.credit import SellerCredit


def test_relay_opens_when_a_buyer_falls_behind_and_closes_when_paid() -> None:
    gpio = SimulatedGpio()
    relay = Relay(gpio, 17, safe_state="connected")
    credit = SellerCredit(credit_sat=100, relay=relay)
    credit.settled(900, {"alice": 80})
    assert str(relay.state) == "connected"  # within credit
    credit.settled(1800, {"bob": 150})
    assert str(relay.state) == "disconnected" and credit.disconnects == 1
    credit.paid("bob", 100)
    assert str(relay.state) == "disconnected"  # bob still 50 behind, alice 80
    credit.paid("bob", 50)
    credit.paid("alice", 80)
    assert str(relay.state) == "connected" and credit.behind() == {}
    assert credit.lines() == ["export relay connected, opened 1 time(s) on a buyer behind"]
    # Every switch went through the GPIO layer: off, then on again.
    assert [t.level for t in gpio.transitions if t.pin == 17][-2:] == [False, True]


def test_a_buyer_whose_stream_stops_is_cut_off_before_the_interval_ends() -> None:
    relay = Relay(SimulatedGpio(), 17, safe_state="connected")
    credit = SellerCredit(credit_sat=30, relay=relay)
    # Interval 900 runs: the buyer's stream keeps up for a while ...
    for expected in (10, 20, 30):
        credit.expect_streamed(900, "dave", expected)
        credit.paid("dave", 10)
    assert str(relay.state) == "connected" and credit.behind() == {}
    # ... then stops paying while it keeps taking energy.
    for expected in (40, 50, 60):
        credit.expect_streamed(900, "dave", expected)
    assert credit.behind() == {"dave": 30} and str(relay.state) == "connected"  # at the credit, not over
    credit.expect_streamed(900, "dave", 70)
    assert str(relay.state) == "disconnected"
    # An older, lower record changes nothing: expectations only grow.
    credit.expect_streamed(900, "dave", 45)
    assert credit.behind() == {"dave": 40}
    # The settlement replaces the estimate (less was delivered than the
    # stream suggested); the buyer pays it and the relay closes again.
    credit.settled(900, {"dave": 55})
    assert credit.streaming == {} and credit.behind() == {"dave": 25}
    credit.paid("dave", 25)
    assert credit.behind() == {} and str(relay.state) == "connected"


def test_streams_of_several_running_intervals_add_up() -> None:
    credit = SellerCredit(credit_sat=0)
    credit.expect_streamed(900, "erin", 20)
    credit.expect_streamed(1800, "erin", 5)
    credit.settled(0, {"erin": 7})
    assert credit.behind() == {"erin": 32}
    credit.settled(900, {})  # nothing delivered after all: the estimate goes
    assert credit.behind() == {"erin": 12}
    # An interval that could not be settled here drops its estimate too.
    credit.forget(1800)
    assert credit.behind() == {"erin": 7} and credit.streaming == {}


def test_without_a_relay_it_only_keeps_the_books_and_refuses_nonsense() -> None:
    credit = SellerCredit(credit_sat=0)
    credit.settled(900, {"carol": 10})
    assert credit.behind() == {"carol": 10} and credit.disconnects == 0
    assert credit.lines() == ["buyer carol is 10 sat behind (credit 0 sat)"]
    with pytest.raises(ValueError, match="expected >= 0"):
        credit.expect_streamed(900, "carol", -1)
    with pytest.raises(ValueError, match="credit_sat=-1"):
        SellerCredit(credit_sat=-1)
