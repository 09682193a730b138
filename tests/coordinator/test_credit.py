"""A seller opens its export relay while a buyer owes more than the credit,
and closes it once every buyer has paid."""

from __future__ import annotations

from microgrid.coordinator.devices.gpio import Relay, SimulatedGpio
from microgrid.coordinator.trading.credit import SellerCredit


def test_relay_opens_when_a_buyer_falls_behind_and_closes_when_paid() -> None:
    gpio = SimulatedGpio()
    relay = Relay(gpio, 17, safe_state="connected")
    credit = SellerCredit(credit_sat=100, relay=relay)
    credit.owe("alice", 80)
    assert str(relay.state) == "connected"  # within credit
    credit.owe("bob", 150)
    assert str(relay.state) == "disconnected" and credit.disconnects == 1
    credit.paid("bob", 100)
    assert str(relay.state) == "disconnected"  # bob still 50 behind, alice 80
    credit.paid("bob", 50)
    credit.paid("alice", 80)
    assert str(relay.state) == "connected" and credit.behind() == {}
    # Every switch went through the GPIO layer: off, then on again.
    assert [t.level for t in gpio.transitions if t.pin == 17][-2:] == [False, True]


def test_without_a_relay_it_only_keeps_the_books() -> None:
    credit = SellerCredit(credit_sat=0)
    credit.owe("carol", 10)
    assert credit.behind() == {"carol": 10} and credit.disconnects == 0
