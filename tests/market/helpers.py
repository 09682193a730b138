"""Keys and order builders shared by the market tests."""

from __future__ import annotations

from bitcoinx import PrivateKey

from microgrid.coordinator.market.orders import SignedOrder, make_order

KEYS = [PrivateKey.from_int(1000 + i) for i in range(12)]
START = 1_700_000_100 - 1_700_000_100 % 900 + 900 * 96  # an interval start, a day ahead of CREATED
CREATED = START - 86_400
EXPIRES = START + 900


def order(side: str, wh: int, price: int, who: int = 0, nonce: int = 0, created: int = CREATED,
          zone: str = "zone-a", start: int = START, expires: int = EXPIRES, interval_s: int = 900) -> SignedOrder:
    return make_order(KEYS[who], side, zone, start, wh, price, expires, nonce, created, interval_s)
