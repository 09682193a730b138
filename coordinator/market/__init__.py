"""The peer-to-peer energy market: orders, prices, clearing, publication,
settlement.

- orders.py      the Order, its canonical signed encoding, validation
- pricing.py     users' prices (fixed, time of day, reserve rule) -> orders
- clearing.py    deterministic double auction per zone and interval (no I/O)
- book.py        publishing and collecting orders through the overlay
- settlement.py  trades + meter readings -> payments, utility fallback, reports

Everything except book.py is pure: state in, results out, no clock reads.
"""
