"""The web app in Debian's Chromium (headless, phone-sized: 390 x 844),
over HTTPS with the appliance's certificate accepted by its fingerprint,
as a household uses it: first-run set-up with the console's code, a price
change that the next signed order carries, a relay switched (the GPIO
follows), a plot drawn from stored readings, a withdrawal refused without
its confirmation. Screenshots of every page are kept (MICROGRID_ARTIFACTS,
else the test's temporary folder)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from microgrid.coordinator.market.pricing import Forecast

from ..channels.conftest import fund
from .browser import Browser
from .helpers import PASSWORD, T0, start


def spki_hash(cert_pem: bytes) -> str:
    """What Chromium's --ignore-certificate-errors-spki-list takes: the
    household accepting exactly this appliance's key."""
    spki = x509.load_pem_x509_certificate(cert_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    h = hashes.Hash(hashes.SHA256())
    h.update(spki)
    return base64.b64encode(h.finalize()).decode()


def test_a_household_uses_the_app_in_chromium_on_a_phone(tmp_path: Path) -> None:
    shots = Path(os.environ.get("MICROGRID_ARTIFACTS", tmp_path / "artifacts")) / "web"

    async def go() -> None:
        coord = await start(tmp_path, tls=True)
        for d in range(8):  # a week of readings for the plots
            t = T0 - (8 - d) * 86_400
            coord.store.insert_measurement("modbus-pv", "roof", t, 0, 3_000 * d, -500.0, 230.0, {}, "modbus:pv")
            coord.store.insert_measurement("modbus-load", "house", t, 4_000 * d, 0, 700.0, 230.0, {}, "modbus:load")
        coord.store.insert_measurement("modbus-load", "house", T0 - 5, 4_000 * 8, 0, 700.0, 230.0, {}, "modbus:load")
        fund(coord.wallet, coord.chain, 100_000)
        base = coord.web.url
        pin = spki_hash((tmp_path / "web" / "cert.pem").read_bytes())
        try:
            async with Browser(tmp_path / "profile", 390, 844, [f"--ignore-certificate-errors-spki-list={pin}"]) as b:
                # First run: every page leads to set-up.
                await b.open(base, "/setup")
                await b.fill({"[name=code]": coord.web.accounts.setup_code(), "[name=name]": "home",
                              "[name=password]": PASSWORD, "[name=password2]": PASSWORD})
                await b.click_and_wait("#setup", "/")
                assert "House" in await b.js("document.body.innerText")
                # Log out and in again, as the household will every day.
                await b.click_and_wait("form.logout button", "/login")
                await b.fill({"[name=name]": "home", "[name=password]": PASSWORD})
                await b.click_and_wait("#login", "/")
                assert "House" in await b.js("document.body.innerText")
                # Phone width: nothing wider than the screen.
                assert await b.js("document.documentElement.scrollWidth") <= 390
                png = await b.screenshot(shots / "now.png")
                assert png.startswith(b"\x89PNG") and len(png) > 5_000

                # Prices: a fixed sell price, saved; the next order carries it.
                await b.open(base + "prices", "/prices")
                await b.fill({"[name=sell_mode][value=fixed]": "x", "#sell_price": "123"})
                await b.click_and_wait("#save", "/prices")
                assert await b.js("document.getElementById('saved') !== null")
                assert coord.config.market.prices["sell"] == 123
                await b.screenshot(shots / "prices.png")
                coord.trading.market.forecaster = lambda t: (Forecast(t, 800, 100), None)
                placed = await coord.trading.market.place_orders(coord.trading.market.next_interval())
                assert [(o.side, o.order.limit_sat_per_kwh) for o in placed] == [("sell", 123)]

                # A relay switched, with its confirmation ticked.
                relay = coord.relays["relay_1"]
                level = coord.gpio.backend.levels[relay.pin]
                await b.open(base + "devices", "/devices")
                await b.fill({"form.relay [name=confirm]": "x"})
                await b.click_and_wait("#switch-relay_1", "/relay")
                assert str(relay.state) == "connected" and coord.gpio.backend.levels[relay.pin] != level
                await b.screenshot(shots / "devices.png")

                # History: bars drawn from the readings.
                await b.open(base + "history?span=week", "/history")
                drawn = await b.js("[...document.querySelectorAll('#energy rect')]"
                                   ".filter(r => r.getBoundingClientRect().height > 1).length")
                assert drawn >= 10
                assert await b.js("document.documentElement.scrollWidth") <= 390
                await b.screenshot(shots / "history.png")

                # Money: a withdrawal is not sent without its confirmation.
                await b.open(base + "money", "/money")
                await b.click_and_wait("#new-address", "/money")
                address = await b.js("document.getElementById('address').innerText")
                assert address.startswith("1")
                # The QR code is drawn whole at its size (12rem), square.
                assert await b.js("(() => { const r = document.querySelector('.qr svg').getBoundingClientRect();"
                                  " return r.width === r.height && r.width === 192; })()")
                await b.fill({"[name=address]": "1BoatSLRHtKNngkdXEeobR76b53LETtpyT", "[name=amount]": "20000"})
                await b.click_and_wait("#withdraw", "/money/withdraw")
                assert await b.js("document.getElementById('confirm-form') !== null")
                await b.screenshot(shots / "withdraw-confirm.png")
                await b.click_and_wait("#send", "/money/withdraw")
                assert "tick the box" in await b.js("document.getElementById('error').innerText")
                assert coord.chain.mempool() == [] and coord.wallet.balance() == 100_000
                await b.screenshot(shots / "money.png")
                assert b.errors == [], b.errors
        finally:
            await coord.stop()

    asyncio.run(asyncio.wait_for(go(), 110))
