"""The web app served by a real coordinator on 127.0.0.1, fetched with
aiohttp's client: first-run set-up, login and its limits, CSRF, roles,
the Now page from stored readings, prices that the next signed order
carries, a relay switched, a withdrawal that needs its confirmation, and
history plots from the readings."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp

from microgrid.coordinator.market import book as bk
from microgrid.coordinator.market.orders import decode_order
from microgrid.coordinator.store.books import BookStore, StoredBook
from microgrid.coordinator.console import Console
from microgrid.coordinator.trading.metering import interval_energy
from microgrid.coordinator.web.accounts import TECHNICIAN
from microgrid.coordinator.web.data import bucket_energy
from microgrid.coordinator.web.data import fmt_time as data_when

from ..channels.conftest import FixedClock, fund
from ..market.helpers import KEYS
from .helpers import PASSWORD, T0, ZONE, csrf_of, log_in, page_csrf, set_up, start


def run(tmp_path: Path, body: Callable[[Any, aiohttp.ClientSession, str], Awaitable[None]], *,
        clock: FixedClock | None = None, logged_in: bool = True, **web: Any) -> None:
    async def go() -> None:
        coord = await start(tmp_path, clock, **web)
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                base = coord.web.url
                if logged_in:
                    r = await set_up(s, base, coord.web.accounts.setup_code())
                    assert r.status == 303
                await body(coord, s, base)
        finally:
            await coord.stop()
    asyncio.run(go())


def test_first_run_set_up_takes_the_one_time_code_once_then_login(tmp_path: Path) -> None:
    async def body(coord: Any, s: aiohttp.ClientSession, base: str) -> None:
        code = coord.web.accounts.setup_code()
        assert coord.web.status()["setup_code"] == code and len(code) == 10
        # The technician reads it on the console, with where to go.
        shown = Console(coord).handle("web")
        assert f"setup_code: {code}" in shown and f"url: {base}" in shown
        async with s.get(base, allow_redirects=False) as r:  # everything leads to set-up
            assert r.status == 303 and r.headers["Location"] == "/setup"
        async with s.get(base + "favicon.ico", allow_redirects=False) as r:  # but the browser's own fetch
            assert r.status == 200 and r.headers["Content-Type"] == "image/svg+xml"
        # A POST without the form's token (a cross-site form) is refused.
        async with s.post(base + "setup", data={"code": code, "name": "x", "password": PASSWORD,
                                                "password2": PASSWORD}) as r:
            assert r.status == 403
        async with await set_up(s, base, "WRONGCODE0") as r:
            assert r.status == 403 and "not the set-up code" in await r.text()
        async with await set_up(s, base, code.lower()) as r:
            assert r.status == 303
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "mg_session=" in cookie
        assert coord.web.accounts.setup_code() is None and coord.web.status()["setup_code"] == "(used)"
        stored = json.loads((tmp_path / "web" / "accounts.json").read_text())
        assert PASSWORD not in json.dumps(stored) and stored["users"]["home"]["n"] == 1 << 14
        assert (tmp_path / "web" / "accounts.json").stat().st_mode & 0o077 == 0
        async with s.get(base) as r:
            assert r.status == 200 and "House" in await r.text()
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store"
        # The code is spent: set-up is closed.
        async with s.get(base + "setup", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/login"
        async with await set_up(s, base.replace("127.0.0.1", "127.0.0.1"), code) as r:
            assert r.status in (303, 403) and len(coord.web.accounts.users) == 1
    run(tmp_path, body, logged_in=False)


def test_login_is_rate_limited_csrf_checked_and_roles_kept(tmp_path: Path) -> None:
    async def body(coord: Any, s: aiohttp.ClientSession, base: str) -> None:
        token = await page_csrf(s, base, "")
        async with s.post(base + "logout", data={"csrf": token}, allow_redirects=False) as r:
            assert r.status == 303
        async with s.get(base, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/login"
        async with s.get(base + "now/fragment") as r:
            assert r.status == 403
        for _ in range(5):
            async with await log_in(s, base, password="wrong password!") as r:
                assert r.status == 403
        async with await log_in(s, base) as r:  # right, but too many failures first
            assert r.status == 429 and "too many" in await r.text()
        coord.web.limiter.failures.clear()
        coord.web.limiter.all_failures.clear()
        async with await log_in(s, base) as r:
            assert r.status == 303
        # CSRF: a POST without the session's token, or from another origin.
        async with s.post(base + "prices", data={"action": "save", "sell_mode": "fixed", "sell_price": "1"}) as r:
            assert r.status == 403
        token = await page_csrf(s, base, "prices")
        async with s.post(base + "prices", data={"csrf": token, "action": "save", "sell_mode": "fixed",
                                                 "sell_price": "1"}, headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        assert coord.config.market.prices == {"sell": 100}
        # The household makes a technician's account, who sees devices, not
        # money or prices, and cannot make accounts.
        token = await page_csrf(s, base, "devices")
        async with s.post(base + "accounts", data={"csrf": token, "name": "tech", "password": "short"}) as r:
            assert r.status == 400 and "at least 10 characters" in await r.text()
        async with s.post(base + "accounts", data={"csrf": token, "name": "tech", "password": PASSWORD}) as r:
            assert r.status == 200 and "technician account tech made" in await r.text()
        assert coord.web.accounts.users["tech"]["role"] == TECHNICIAN
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as t:
            async with await log_in(t, base, "tech") as r:
                assert r.status == 303
            for path in ("money", "prices"):
                async with t.get(base + path) as r:
                    assert r.status == 403
            async with t.get(base + "devices") as r:
                html = await r.text()
                assert r.status == 200 and "relay_1" in html and "Technician account" not in html
            token = csrf_of(html)
            async with t.post(base + "accounts", data={"csrf": token, "name": "x", "password": PASSWORD}) as r:
                assert r.status == 403
            async with t.post(base + "relay", data={"csrf": token, "relay": "relay_1", "state": "connected",
                                                    "confirm": "yes"}) as r:
                assert r.status == 200
        # Hostile input: an oversized form, a forged session cookie.
        token = await page_csrf(s, base, "prices")
        async with s.post(base + "prices", data={"csrf": token, "sell_mode": "x" * 100_000}) as r:
            assert r.status == 413
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                         cookies={"mg_session": "A" * 43}) as f:
            async with f.get(base + "money", allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/login"
    run(tmp_path, body)


def test_now_shows_meters_the_house_flow_the_market_and_relays(tmp_path: Path) -> None:
    async def body(coord: Any, s: aiohttp.ClientSession, base: str) -> None:
        store = coord.store
        store.insert_measurement("modbus-pv", "roof", T0 - 10, 0, 5_000, -2_400.0, 231.0, {}, "modbus:pv")
        store.insert_measurement("modbus-load", "kitchen", T0 - 5, 9_000, 0, 900.0, 231.0, {}, "modbus:load")
        store.insert_measurement("modbus-old", "shed", T0 - 3_600, 10, 0, 50.0, 231.0, {}, "modbus:old")
        # This interval cleared at 120 sat/kWh; we sell 300 Wh to a neighbour.
        from microgrid.coordinator.market.clearing import clear_interval
        from microgrid.coordinator.market.orders import make_order

        start = int(T0) // 900 * 900
        me = coord.key
        orders = [make_order(me, "sell", ZONE, start, 300, 100, start + 900, 1, start - 3600, 900),
                  make_order(KEYS[1], "buy", ZONE, start, 300, 140, start + 900, 1, start - 3600, 900)]
        coord.trading.stats.cleared[start] = clear_interval(orders, ZONE, start, 900, coord.config.market.rules())
        async with s.get(base) as r:
            html = await r.text()
        house = re.search(r'id="house">(.*?)</div>', html, re.S).group(1)  # type: ignore[union-attr]
        assert "1500 W" in house and "exporting" in house  # 900 - 2400; the silent shed does not count
        market = re.search(r'id="market">(.*?)</div>', html, re.S).group(1)  # type: ignore[union-attr]
        assert "120 sat/kWh" in market and "earning 36 sat" in market
        flows = re.search(r'id="flows">(.*?)</table>', html, re.S).group(1)  # type: ignore[union-attr]
        assert KEYS[1].public_key.to_hex()[:16] in flows and ">300<" in flows
        meters = re.search(r'id="meters">(.*?)</table>', html, re.S).group(1)  # type: ignore[union-attr]
        assert "roof" in meters and "-2400 W" in meters and 'class="warn"><td>shed' in meters
        assert "relay_1</span> disconnected" in html and 'src="/static/live.js"' in html
        async with s.get(base + "now/fragment") as r:
            assert r.status == 200 and "1500 W" in await r.text()
        async with s.get(base + "devices") as r:
            alerts = re.search(r'id="alerts">(.*?)</ul>', await r.text(), re.S).group(1)  # type: ignore[union-attr]
        assert "meter shed is silent (last reading: 60 min ago)" in alerts and "wallet low: 0 sat" in alerts
        assert "roof" not in alerts and "clock" not in alerts
        async with s.get(base + "static/live.js") as r:
            assert r.status == 200 and "fetch(" in await r.text()
        async with s.get(base + "static/style.css") as r:
            assert r.status == 200 and "@media" in await r.text()
    run(tmp_path, body)


def test_a_price_set_in_the_page_is_validated_previewed_and_carried_by_the_next_order(tmp_path: Path) -> None:
    async def body(coord: Any, s: aiohttp.ClientSession, base: str) -> None:
        market = coord.config.market
        token = await page_csrf(s, base, "prices")
        for form, says in (({"sell_mode": "fixed", "sell_price": "abc"}, "not a whole number"),
                           ({"sell_mode": "fixed", "sell_price": "-5"}, "outside 0.."),
                           ({"sell_mode": "fixed", "sell_price": ""}, "needs a number"),
                           ({"sell_mode": "maybe"}, "sell_mode"),
                           ({"buy_mode": "tariff", "buy_margin": "400"}, "gives -150 sat/kWh")):
            async with s.post(base + "prices", data={"csrf": token, "action": "save", **form}) as r:
                assert r.status == 400 and says in await r.text(), (form, says)
        assert market.prices == {"sell": 100}
        # Last week's kept book: our sell at 100 met a neighbour's buy at 130.
        start = int(T0) // 900 * 900 - 900 * 8
        me = coord.key
        from microgrid.coordinator.market.clearing import clear_interval
        from microgrid.coordinator.market.orders import make_order

        orders = [make_order(me, "sell", ZONE, start, 500, 100, start + 900, 7, start - 3600, 900),
                  make_order(KEYS[2], "buy", ZONE, start, 400, 130, start + 900, 1, start - 3600, 900)]
        cleared = clear_interval(orders, ZONE, start, 900, market.rules())
        BookStore(coord.store.db).save(StoredBook(ZONE, start, 900, cleared.hash, [o.encoded for o in orders]))
        form = {"csrf": token, "sell_mode": "tariff", "sell_margin": "110", "sell_bound": "60",
                "buy_mode": "fixed", "buy_price": "300", "buy_bound": "200"}
        async with s.post(base + "prices", data={**form, "action": "preview"}) as r:
            html = await r.text()
            assert r.status == 200
        table = re.search(r'id="preview-table">(.*?)</table>', html, re.S).group(1)  # type: ignore[union-attr]
        # 40 + 110 = 150 is above the neighbour's 130: nothing would have sold.
        assert re.search(r"Sold</td><td>400 Wh</td><td>0 Wh", table), table
        assert market.prices == {"sell": 100}  # a preview changes nothing
        async with s.post(base + "prices", data={**form, "action": "save"}) as r:
            assert r.status == 200 and 'id="saved"' in await r.text()
        assert market.prices == {"sell": 150, "sell_floor_sat_per_kwh": 60, "buy": 200}
        assert json.loads((tmp_path / "web" / "prices.json").read_text())["sell"]["mode"] == "tariff"
        # The next order the market places carries it, signed, on the overlay.
        nxt = coord.trading.market.next_interval()
        coord.trading.forecast = lambda t: (__import__("microgrid.coordinator.market.pricing",
                                                       fromlist=["Forecast"]).Forecast(t, 800, 100), None)
        coord.trading.market.forecaster = coord.trading.forecast
        placed = await coord.trading.market.place_orders(nxt)
        assert [(o.side, o.order.limit_sat_per_kwh) for o in placed] == [("sell", 150)]
        on_overlay = [decode_order(bk.value_bytes(v)) for v in await coord.overlay.get(bk.order_key(ZONE, nxt))]
        assert [(o.owner, o.order.limit_sat_per_kwh) for o in on_overlay] == [(placed[0].owner, 150)]
    run(tmp_path, body)


def test_saved_prices_survive_a_restart(tmp_path: Path) -> None:
    async def first(coord: Any, s: aiohttp.ClientSession, base: str) -> None:
        token = await page_csrf(s, base, "prices")
        async with s.post(base + "prices", data={"csrf": token, "action": "save", "sell_mode": "fixed",
                                                 "sell_price": "90"}) as r:
            assert r.status == 200
    run(tmp_path, first)

    async def again() -> None:
        coord = await start(tmp_path)
        try:
            assert coord.config.market.prices == {"sell": 90}
            assert coord.web.accounts.setup_code() is None  # the account is kept too
        finally:
            await coord.stop()
    asyncio.run(again())

    # Saved rules the tariff no longer allows, or a damaged file: the
    # coordinator starts with the configured prices and says why.
    for text in ('{"buy": {"mode": "tariff", "margin": 900}}', "{not json"):
        (tmp_path / "web" / "prices.json").write_text(text)
        asyncio.run(again_with_config_prices(tmp_path))


async def again_with_config_prices(tmp_path: Path) -> None:
    coord = await start(tmp_path)
    try:
        assert coord.config.market.prices == {"sell": 100}
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with await log_in(s, coord.web.url) as r:
                assert r.status == 303
            async with s.get(coord.web.url + "prices") as r:
                html = await r.text()
                assert r.status == 200 and "your saved prices are not in force" in html
                assert 'id="sell_price" inputmode="numeric" value="100"' in html
    finally:
        await coord.stop()


def test_a_relay_switches_only_when_confirmed_and_the_gpio_follows(tmp_path: Path) -> None:
    async def body(coord: Any, s: aiohttp.ClientSession, base: str) -> None:
        relay = coord.relays["relay_1"]
        levels = coord.gpio.backend.levels
        before = levels[relay.pin]
        token = await page_csrf(s, base, "devices")
        async with s.post(base + "relay", data={"csrf": token, "relay": "relay_1", "state": "connected"}) as r:
            assert r.status == 400 and "not switched" in await r.text()
        assert str(relay.state) == "disconnected" and levels[relay.pin] == before
        async with s.post(base + "relay", data={"csrf": token, "relay": "nope", "state": "connected",
                                                "confirm": "yes"}) as r:
            assert r.status == 404
        async with s.post(base + "relay", data={"csrf": token, "relay": "relay_1", "state": "connected",
                                                "confirm": "yes"}) as r:
            assert r.status == 200 and "relay relay_1: connected" in await r.text()
        assert str(relay.state) == "connected" and levels[relay.pin] != before
    run(tmp_path, body)


def test_a_withdrawal_is_sent_only_after_its_confirmation(tmp_path: Path) -> None:
    async def body(coord: Any, s: aiohttp.ClientSession, base: str) -> None:
        fund(coord.wallet, coord.chain, 200_000)
        token = await page_csrf(s, base, "money")
        async with s.post(base + "money/address", data={"csrf": token}) as r:
            html = await r.text()
            assert r.status == 200 and "<svg" in html  # the QR code, drawn on the server
        address = re.search(r'id="address">([^<]+)<', html).group(1)  # type: ignore[union-attr]
        assert address.startswith("1")
        from bitcoinx import Bitcoin, PrivateKey

        dest = PrivateKey.from_random().public_key.to_address(network=Bitcoin).to_string()
        for form, says in (({"address": "1notanaddress", "amount": "1000"}, "not a Bitcoin SV address"),
                           ({"address": dest, "amount": "9999999"}, "between"),
                           ({"address": dest, "amount": "ten"}, "whole number")):
            async with s.post(base + "money/withdraw", data={"csrf": token, **form}) as r:
                assert r.status == 400 and says in await r.text()
        async with s.post(base + "money/withdraw", data={"csrf": token, "address": dest, "amount": "50000"}) as r:
            html = await r.text()
        confirm = re.search(r'name="confirm_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
        assert coord.wallet.balance() == 200_000 and coord.chain.mempool() == []
        async with s.post(base + "money/withdraw", data={"csrf": token, "confirm_token": confirm}) as r:
            assert r.status == 400 and "tick the box" in await r.text()
        assert coord.wallet.balance() == 200_000 and coord.chain.mempool() == []
        async with s.post(base + "money/withdraw", data={"csrf": token, "address": dest, "amount": "50000"}) as r:
            confirm = re.search(r'name="confirm_token" value="([^"]+)"', await r.text()).group(1)  # type: ignore[union-attr]
        async with s.post(base + "money/withdraw", data={"csrf": token, "confirm_token": confirm,
                                                         "confirm": "yes"}) as r:
            assert r.status == 200 and "sent 50000 sat" in await r.text()
        assert len(coord.chain.mempool()) == 1 and coord.wallet.balance() < 150_000
        async with s.post(base + "money/withdraw", data={"csrf": token, "confirm_token": confirm,
                                                         "confirm": "yes"}) as r:
            assert r.status == 400 and "expired" in await r.text()  # one use
        assert len(coord.chain.mempool()) == 1
    run(tmp_path, body)


def test_money_shows_channels_with_partner_paid_and_expiry_and_dues_per_period(tmp_path: Path) -> None:
    """A neighbour opens a channel to us over CoAP and pays on it; a
    settled interval's dues are recorded. The Money page and the alerts
    show them."""
    import aiocoap

    from microgrid.coordinator.channels.transport import ChannelClient
    from microgrid.coordinator.store.dues import Due

    from ..channels.conftest import make_node

    async def body(coord: Any, s: aiohttp.ClientSession, base: str) -> None:
        buyer = make_node(tmp_path, "buyer", coord.chain, coord.clock, funds=500_000)
        node = coord.channel_lifecycle.node
        node.admission = dataclasses.replace(node.admission, allowed=frozenset({buyer.public_key}))
        client = await aiocoap.Context.create_client_context()
        try:
            cc = ChannelClient(buyer, client)
            cid = await cc.open_channel(coord.coap_uri("channel"), 100_000, 7_200)
            await cc.pay(cid, 1_234)
        finally:
            await client.shutdown()
        me = coord.trading.public_hex
        coord.trading.dues.record(int(T0) - 3 * 86_400, [Due(buyer.public_key.hex(), me, 300, 40)])
        coord.trading.dues.record(int(T0) - 3600, [Due(buyer.public_key.hex(), me, 100, 12),
                                                   Due(me, KEYS[3].public_key.to_hex(), 50, 9)])
        async with s.get(base + "money") as r:
            html = await r.text()
        channels = re.search(r'id="channels">(.*?)</table>', html, re.S).group(1)  # type: ignore[union-attr]
        assert buyer.public_key.hex()[:16] in channels and "pays us" in channels
        assert "<td>100000</td><td>1234</td><td>open</td>" in channels
        expiry = coord.channel_lifecycle.node.payee(cid).terms.refund_locktime
        assert data_when(expiry) in channels
        periods = re.search(r'id="periods">(.*?)</table>', html, re.S).group(1)  # type: ignore[union-attr]
        rows = re.findall(r"<tr><td>Last (\w+)</td>\s*<td>([\d,]+) sat <span class=\"muted\">(\d+) Wh</span></td>\s*"
                          r"<td>([\d,]+) sat", periods)
        assert rows == [("day", "12", "100", "9"), ("week", "52", "400", "9"), ("month", "52", "400", "9")], periods
        days = re.findall(r"<tr><td>(\d{4}-\d\d-\d\d)</td><td>([\d,]+) sat", re.search(
            r'id="by">(.*?)</table>', html, re.S).group(1))  # type: ignore[union-attr]
        assert len(days) == 14 and days[0][1] == "12" and days[3][1] == "40" and {d[1] for d in days[4:]} == {"0"}
        async with s.get(base + "money?by=month") as r:
            months = re.findall(r"<tr><td>(\d{4}-\d\d-01)</td><td>([\d,]+) sat", await r.text())
        assert len(months) == 12 and months[0] == ("2023-11-01", "52")
        async with s.get(base + "devices") as r:
            alerts = await r.text()
        assert f"channel {cid.hex()[:16]} with {buyer.public_key.hex()[:16]} closes within 2 h" in alerts
    run(tmp_path, body)


def test_history_plots_energy_and_self_sufficiency_from_stored_readings(tmp_path: Path) -> None:
    async def body(coord: Any, s: aiohttp.ClientSession, base: str) -> None:
        day = 86_400
        for d in range(8):  # a week and a day: the roof makes 3 kWh a day, the house uses 4
            t = T0 - (8 - d) * day
            coord.store.insert_measurement("modbus-pv", "roof", t, 0, 3_000 * d, -500.0, 230.0, {}, "modbus:pv")
            coord.store.insert_measurement("modbus-load", "house", t, 4_000 * d, 0, 700.0, 230.0, {}, "modbus:load")
        from microgrid.coordinator.market.clearing import clear_interval
        from microgrid.coordinator.market.orders import make_order

        for k, price in ((3, 90), (2, 150)):  # two cleared intervals in the week
            start = int(T0) // 900 * 900 - k * day
            orders = [make_order(KEYS[0], "sell", ZONE, start, 100, price, start + 900, 1, start - 3600, 900),
                      make_order(KEYS[1], "buy", ZONE, start, 100, price, start + 900, 1, start - 3600, 900)]
            coord.trading.stats.cleared[start] = clear_interval(orders, ZONE, start, 900, coord.config.market.rules())
        async with s.get(base + "history?span=week") as r:
            html = await r.text()
            assert r.status == 200
        line = re.search(r'<polyline class="price" points="([^"]+)"', html).group(1)  # type: ignore[union-attr]
        assert line.split() == ["0.0,40.0", "1000.0,0.0"] and "up to 150 sat/kWh" in html
        rows = re.findall(r"<tr><td>[^<]+UTC</td><td>(\d+)</td><td>(\d+)</td><td>([^<]+)</td></tr>", html)
        assert len(rows) == 7 and ("4000", "3000", "75 %") in rows, rows
        energy = re.search(r'id="energy".*?</svg>', html, re.S).group(0)  # type: ignore[union-attr]
        assert re.search(r'class="imp"[^>]*height="100', energy) and re.search(r'class="exp"[^>]*height="75', energy)
        assert 'id="selfsufficiency"' in html
        async with s.get(base + "history?span=year") as r:
            assert r.status == 400
    run(tmp_path, body)


def test_bucket_energy_from_edge_counters_is_the_market_metering_exactly(tmp_path: Path) -> None:
    """Counters read at bucket edges give what walking every reading gives
    (trading/metering.py), across a counter reset with its signed totals,
    a meter that starts mid-span, a silent spell and thinned readings."""
    from microgrid.coordinator.store.database import open_database
    from microgrid.coordinator.store.readings import ReadingStore

    store = ReadingStore(open_database(tmp_path / "r.db"))
    t0 = 1_700_000_000
    imp = 0
    for i in range(200):  # every 7 minutes; a reset at 120; silent from 150 to 170
        if 150 <= i < 170:
            continue
        t = t0 + 420 * i
        extra: dict[str, Any] = {}
        if i == 120:
            extra = {"reset": "power", "reset_import_wh": imp + 33, "reset_export_wh": 0}
            imp = 5
        else:
            imp += 17 + i % 5
        store.insert_measurement("a", "a", t, imp, 2 * i, 0.0, 230.0, extra, "test")
    for i in range(60, 200, 9):  # starts later, reads rarely
        store.insert_measurement("b", "b", t0 + 420 * i + 13, 40 * i, 0, 0.0, 230.0, {}, "test")
    edges = [t0 - 3600 + 3600 * k for k in range(26)]
    now = t0 + 420 * 199 + 1
    got = bucket_energy(store, ["a", "b"], edges, now)
    want = []
    for a, b in zip(edges, edges[1:]):
        e = interval_energy(store, ["a", "b"], a, min(b, now))
        want.append((e.import_wh, e.export_wh))
    assert got == want and sum(x for x, _ in got) > 0


def test_https_with_the_appliance_certificate_and_its_fingerprint(tmp_path: Path) -> None:
    async def go() -> None:
        coord = await start(tmp_path, tls=True)
        try:
            assert coord.web.url.startswith("https://127.0.0.1:")
            fp = coord.web.fingerprint
            ctx = ssl.create_default_context(cafile=str(tmp_path / "web" / "cert.pem"))
            ctx.check_hostname = False
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                async with s.get(coord.web.url + "login", ssl=ctx, allow_redirects=False) as r:
                    assert r.status == 303  # no account yet: set-up first
                async with s.get(coord.web.url + "setup", ssl=ctx) as r:
                    assert "Secure" in r.headers["Set-Cookie"]
            # What the browser is served is what the console shows.
            port = int(coord.web.url.rsplit(":", 1)[1].strip("/"))
            pem = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port))
            served = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).digest()
            assert ":".join(f"{b:02X}" for b in served) == fp
            assert (tmp_path / "web" / "key.pem").stat().st_mode & 0o077 == 0
        finally:
            await coord.stop()
    asyncio.run(go())


__all__ = ["csrf_of"]


def test_every_page_renders_on_a_coordinator_without_market_or_wallet(tmp_path: Path) -> None:
    """Web and relays only (no market, channels or wallet): each page says
    what is missing instead of failing."""
    from microgrid.coordinator.app import Coordinator
    from microgrid.coordinator.config import from_dict

    from ..conftest import free_udp_port

    async def go() -> None:
        coord = Coordinator(from_dict({
            "coap": {"port": free_udp_port()}, "store": {"path": str(tmp_path / "c.db")},
            "console": {"socket": str(tmp_path / "console.sock")},
            "web": {"enabled": True, "port": 0, "tls": False}}))
        await coord.start()
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                base = coord.web.url
                async with await set_up(s, base, coord.web.accounts.setup_code()) as r:
                    assert r.status == 303
                for path in ("", "now/fragment", "prices", "money", "money?by=month", "history?span=day",
                             "history?span=month", "devices"):
                    async with s.get(base + path) as r:
                        assert r.status == 200, (path, r.status, (await r.text())[:300])
                token = await page_csrf(s, base, "money")
                async with s.post(base + "money/withdraw", data={"csrf": token, "address": "x", "amount": "1"}) as r:
                    assert r.status == 409 and "no wallet" in await r.text()
                async with s.post(base + "prices", data={"csrf": token, "action": "preview", "sell_mode": "fixed",
                                                         "sell_price": "100"}) as r:
                    assert r.status == 200 and 'id="preview-table"' in await r.text()
        finally:
            await coord.stop()
    asyncio.run(go())
