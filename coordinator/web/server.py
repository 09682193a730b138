"""The household's web app: aiohttp on the coordinator's event loop,
pages rendered on the server with Jinja2, every style and script served
from the package (no CDN; the Content-Security-Policy allows 'self' only).

Requests pass three gates (`_gate`), in order:
1. set-up: while no account exists, every page leads to /setup, which
   takes the one-time code from the console or the log;
2. a session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS) for
   everything but /login, /setup and /static; the role decides the rest
   (money and prices are the household's);
3. CSRF on every POST: the session's token in the form (and for the login
   and set-up forms, the pre-session cookie's), and a same-origin Origin
   header when the browser sends one.

Handlers read through data.py and change state only through what already
exists: market settings' prices (web/prices.py), a relay's connect() and
disconnect(), the wallet's build_payment() and the chain's broadcast.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import jinja2
import segno
from aiohttp import web

from . import data
from . import prices as price_rules
from .accounts import HOUSEHOLD, TECHNICIAN, AccountError, Accounts, LoginLimiter, Session
from .settings import WebSettings

log = logging.getLogger("microgrid.web")

HERE = Path(__file__).parent
SESSION_COOKIE = "mg_session"
PRE_COOKIE = "mg_pre"
HOUSEHOLD_ONLY = ("/prices", "/money", "/accounts")
CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION = web.RequestKey("session", Session)  # the gate's session, for the handlers


class WebApp:
    """The app for one coordinator (`coord`: coordinator/app.py's
    Coordinator, or anything with its attributes)."""

    def __init__(self, coord: Any, settings: WebSettings, folder: Path, clock: Callable[[], float] | None = None) -> None:
        self.coord = coord
        self.settings = settings
        self.folder = folder
        self.clock = clock or coord.clock.now
        self.accounts = Accounts(folder, clock=time.monotonic, session_s=settings.session_s)
        self.limiter = LoginLimiter(settings.login_attempts, settings.login_window_s, clock=time.monotonic)
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                      autoescape=True, undefined=jinja2.StrictUndefined)
        self.env.filters["when"] = data.fmt_time
        self.env.filters["ago"] = data.fmt_ago
        self.env.filters["sat"] = self.fmt_sat
        self.pending_withdrawals: dict[str, tuple[str, str, int, float]] = {}  # token -> (sid, address, sat, t)
        self.receive_address: str | None = None
        self.fingerprint = ""
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.port = settings.port
        market = getattr(getattr(coord, "config", None), "market", None)
        try:
            saved = price_rules.load(folder)
            if saved is not None and market is not None:
                price_rules.apply(saved, market)
                log.info("prices from the web app applied: %s", market.prices)
        except price_rules.PriceRuleError as e:
            # A tariff changed since, or a damaged file: the configured
            # prices stay, the household is told on the Prices page.
            log.error("web app prices not applied, [market.prices] stays in force: %s", e)

    # -- life cycle -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers, self._gate], client_max_size=64 * 1024)
        r = app.router
        r.add_get("/", self.now_page)
        r.add_get("/now/fragment", self.now_fragment)
        r.add_get("/setup", self.setup_form)
        r.add_post("/setup", self.setup_post)
        r.add_get("/login", self.login_form)
        r.add_post("/login", self.login_post)
        r.add_post("/logout", self.logout)
        r.add_get("/prices", self.prices_page)
        r.add_post("/prices", self.prices_post)
        r.add_get("/money", self.money_page)
        r.add_post("/money/address", self.new_address)
        r.add_post("/money/withdraw", self.withdraw)
        r.add_get("/history", self.history_page)
        r.add_get("/devices", self.devices_page)
        r.add_post("/relay", self.relay_post)
        r.add_post("/accounts", self.add_account)
        r.add_get("/favicon.ico", self.favicon)
        r.add_static("/static/", HERE / "static", append_version=False)
        return app

    async def start(self) -> None:
        s = self.settings
        ssl_ctx = None
        if s.tls:
            from .tls import ensure_certificate, fingerprint, server_context

            cert, key = ensure_certificate(self.folder, s.host)
            self.fingerprint = fingerprint(cert)
            ssl_ctx = server_context(cert, key)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.port, ssl_context=ssl_ctx, backlog=64)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        host = f"[{s.host}]" if ":" in s.host else s.host
        self.url = f"{'https' if s.tls else 'http'}://{host}:{self.port}/"
        log.info("web app on %s%s", self.url, f" (certificate SHA-256 {self.fingerprint})" if self.fingerprint else "")
        code = self.accounts.setup_code()
        if code is not None:
            # The household reads it from the console (`web`) or here.
            log.warning("web app: no account yet; set up at %ssetup with the one-time code %s", self.url, code)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def status(self) -> dict[str, Any]:
        """For the console: where, which certificate, and the set-up code
        while nobody has set up."""
        return {"url": self.url, "fingerprint": self.fingerprint or "(plain HTTP)",
                "setup_code": self.accounts.setup_code() or "(used)", "accounts": len(self.accounts.users),
                "sessions": len(self.accounts.sessions), "logins_refused": self.limiter.refused}

    # -- middleware -----------------------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resp = await handler(request)
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        # same-origin, not no-referrer: under no-referrer browsers send
        # "Origin: null" with the app's own forms, which the gate refuses.
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers["X-Frame-Options"] = "DENY"
        if not request.path.startswith("/static/"):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if request.method == "POST" and not self._same_origin(request):
            raise web.HTTPForbidden(text="cross-site request refused")
        if path.startswith("/static/") or path == "/favicon.ico":
            return await handler(request)
        if self.accounts.needs_setup() and path != "/setup":
            raise web.HTTPSeeOther("/setup")
        if path in ("/login", "/setup"):
            if request.method == "POST":
                form = await request.post()
                pre = request.cookies.get(PRE_COOKIE, "")
                if not pre or not hmac.compare_digest(str(form.get("csrf", "")).encode(), pre.encode()):
                    raise web.HTTPForbidden(text="form expired: reload the page and try again")
            return await handler(request)
        session = self.accounts.session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            if request.method == "GET" and path != "/now/fragment":
                raise web.HTTPSeeOther("/login")
            raise web.HTTPForbidden(text="log in first")
        if session.role != HOUSEHOLD and path.startswith(HOUSEHOLD_ONLY):
            raise web.HTTPForbidden(text=f"the {session.role} account may not open {path}")
        if request.method == "POST":
            form = await request.post()
            if not hmac.compare_digest(str(form.get("csrf", "")).encode(), session.csrf.encode()):
                raise web.HTTPForbidden(text="form expired: reload the page and try again")
        request[SESSION] = session
        return await handler(request)

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        """No Origin (older browsers, tools): the CSRF token decides. An
        Origin must name this very host and port."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        return origin != "null" and urlsplit(origin).netloc == request.host

    # -- rendering ---------------------------------------------------------------------------

    def fmt_sat(self, sat: float | None) -> str:
        if sat is None:
            return "-"
        text = f"{sat:,.0f} sat" if float(sat).is_integer() else f"{sat:,.3f} sat"
        rate = self.settings.fiat_per_btc
        if rate:
            text += f" ({sat * rate / 1e8:,.2f} {self.settings.fiat_code})"
        return text

    def render(self, request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
        session = request.get(SESSION)
        body = self.env.get_template(template).render(
            session=session, csrf=session.csrf if session else "", path=request.path, household=HOUSEHOLD, **ctx)
        return web.Response(text=body, content_type="text/html", status=status)

    def render_open(self, request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
        """A page for people without a session: its own CSRF cookie, kept
        while it lasts (a second tab, or the browser's own fetch of
        /favicon.ico sent to set-up, must not void the form in the first)."""
        token = request.cookies.get(PRE_COOKIE, "")
        if not (20 <= len(token) <= 64 and token.replace("-", "").replace("_", "").isalnum()):
            token = secrets.token_urlsafe(24)
        body = self.env.get_template(template).render(session=None, csrf=token, path=request.path, **ctx)
        resp = web.Response(text=body, content_type="text/html", status=status)
        if token != request.cookies.get(PRE_COOKIE):
            resp.set_cookie(PRE_COOKIE, token, httponly=True, samesite="Strict", secure=self.settings.tls, path="/")
        return resp

    def _login(self, request: web.Request, name: str, role: str) -> web.Response:
        s = self.accounts.open_session(name, role)
        resp = web.Response(status=303, headers={"Location": "/"})
        resp.set_cookie(SESSION_COOKIE, s.sid, httponly=True, samesite="Strict", secure=self.settings.tls, path="/",
                        max_age=self.settings.session_s)
        resp.del_cookie(PRE_COOKIE, path="/")
        return resp

    async def favicon(self, request: web.Request) -> web.StreamResponse:
        """Browsers ask for it on their own; answered here, it never runs
        into the gate's redirect (which would re-render the login form
        and its pre-session token behind the household's back)."""
        return web.FileResponse(HERE / "static" / "icon.svg", headers={"Content-Type": "image/svg+xml"})

    # -- set-up and login ----------------------------------------------------------------------

    async def setup_form(self, request: web.Request) -> web.Response:
        if not self.accounts.needs_setup():
            raise web.HTTPSeeOther("/login")
        return self.render_open(request, "setup.html", error="")

    async def setup_post(self, request: web.Request) -> web.Response:
        if not self.accounts.needs_setup():
            raise web.HTTPSeeOther("/login")
        source = request.remote or "?"
        if not self.limiter.allowed(source):
            return self.render_open(request, "setup.html", status=429, error="too many attempts: wait a few minutes")
        form = await request.post()
        if not self.accounts.check_setup_code(str(form.get("code", ""))):
            self.limiter.failed(source)
            return self.render_open(request, "setup.html", status=403,
                                    error="that is not the set-up code shown on the console")
        name, pw, pw2 = (str(form.get(k, "")) for k in ("name", "password", "password2"))
        if pw != pw2:
            return self.render_open(request, "setup.html", status=400, error="the two passwords differ")
        try:
            await asyncio.to_thread(self.accounts.add, name, pw, HOUSEHOLD)
        except AccountError as e:
            return self.render_open(request, "setup.html", status=400, error=str(e))
        return self._login(request, name, HOUSEHOLD)

    async def login_form(self, request: web.Request) -> web.Response:
        return self.render_open(request, "login.html", error="")

    async def login_post(self, request: web.Request) -> web.Response:
        source = request.remote or "?"
        if not self.limiter.allowed(source):
            log.warning("web login refused for %s: too many failed attempts", source)
            return self.render_open(request, "login.html", status=429,
                                    error="too many failed attempts: wait a few minutes")
        form = await request.post()
        name, pw = str(form.get("name", ""))[:64], str(form.get("password", ""))[:256]
        role = await asyncio.to_thread(self.accounts.verify, name, pw)
        if role is None:
            self.limiter.failed(source)
            return self.render_open(request, "login.html", status=403, error="wrong name or password")
        self.limiter.succeeded(source)
        return self._login(request, name, role)

    async def logout(self, request: web.Request) -> web.Response:
        self.accounts.close_session(request.cookies.get(SESSION_COOKIE))
        resp = web.Response(status=303, headers={"Location": "/login"})
        resp.del_cookie(SESSION_COOKIE, path="/")
        return resp

    # -- pages -----------------------------------------------------------------------------------

    async def now_page(self, request: web.Request) -> web.Response:
        return self.render(request, "now.html", now=data.now_page(self.coord, self.clock()))

    async def now_fragment(self, request: web.Request) -> web.Response:
        """The Now page's live part, which static/live.js swaps in."""
        return self.render(request, "now_body.html", now=data.now_page(self.coord, self.clock()))

    def _market(self) -> Any:
        return getattr(getattr(self.coord, "config", None), "market", None)

    async def prices_page(self, request: web.Request) -> web.Response:
        market = self._market()
        error = ""
        try:
            rules = price_rules.load(self.folder)
            if rules is not None and market is not None:
                price_rules.limits(rules, market)
        except price_rules.PriceRuleError as e:
            rules, error = None, f"your saved prices are not in force ({e}): the configured ones are; save new ones"
        rules = rules or (price_rules.current(market) if market else price_rules.PriceRules())
        return self.render(request, "prices.html", rules=rules, market=market, error=error, saved=False, preview=None)

    async def prices_post(self, request: web.Request) -> web.Response:
        market = self._market()
        form = await request.post()
        flat = {k: str(v) for k, v in form.items()}
        try:
            rules = price_rules.parse_form(flat)
            if market is None:
                raise price_rules.PriceRuleError("this coordinator has no [market] section")
            sell, buy = price_rules.limits(rules, market)
            price_rules.price_table(rules, market)
        except price_rules.PriceRuleError as e:
            return self.render(request, "prices.html", status=400, rules=price_rules.current(market) if market
                               else price_rules.PriceRules(), market=market, error=str(e), saved=False, preview=None)
        if flat.get("action") == "save":
            table = price_rules.apply(rules, market)
            price_rules.save(self.folder, rules)
            log.info("prices set in the web app by %s: %s", request[SESSION].user, table)
            return self.render(request, "prices.html", rules=rules, market=market, error="", saved=True,
                               preview=None)
        preview = await asyncio.to_thread(self._preview, market, sell, buy)
        return self.render(request, "prices.html", rules=rules, market=market, error="", saved=False,
                           preview=preview)

    def _preview(self, market: Any, sell: int | None, buy: int | None) -> dict[str, Any]:
        from ..market.orders import decode_order
        from ..store.books import BookStore

        since = int(self.clock()) - 7 * 86_400
        seen: dict[int, tuple[str, int, int, list[Any]]] = {}
        for b in BookStore(self.coord.store.db).since(market.zone, since):
            try:
                seen[b.interval_start] = (b.zone, b.interval_start, b.interval_s, [decode_order(o) for o in b.orders])
            except ValueError:
                continue
        trading = self.coord.trading
        if trading is not None:
            for start, rnd in trading.market.rounds.items():
                if start >= since and start not in seen and rnd.book:
                    seen[start] = (market.zone, start, market.interval_s, list(rnd.book))
        then, would = price_rules.preview([seen[k] for k in sorted(seen)], self.coord.key, market.rules(), sell, buy)
        return {"then": then, "would": would, "sell": sell, "buy": buy}

    async def money_page(self, request: web.Request, status: int = 200, **extra: Any) -> web.Response:
        now = self.clock()
        m = data.money(self.coord, now)
        by = request.query.get("by", "day")
        if by not in ("day", "week", "month"):
            by = "day"
        market = self._market()
        buckets = data.money_buckets(self.coord, now, by, market.utc_offset_s if market is not None else 0)
        qr = segno.make(self.receive_address, error="m").svg_inline(scale=4, dark="#111", light="#fff", omitsize=True) \
            if self.receive_address else ""
        ctx: dict[str, Any] = {"money": m, "address": self.receive_address, "qr": qr, "confirm": None,
                               "message": "", "error": "", "by": by, "buckets": buckets}
        ctx.update(extra)
        return self.render(request, "money.html", status=status, **ctx)

    async def new_address(self, request: web.Request) -> web.Response:
        from bitcoinx import Bitcoin

        from ..channels.wallet import RECEIVE_CHAIN

        wallet = self.coord.wallet
        if wallet is None:
            return await self.money_page(request, status=409, error="no wallet: channels are not enabled")
        index, _ = wallet.receive_script()
        if wallet.path is not None:
            wallet.save()
        self.receive_address = wallet.key(RECEIVE_CHAIN, index).public_key.to_address(network=Bitcoin).to_string()
        raise web.HTTPSeeOther("/money")

    async def withdraw(self, request: web.Request) -> web.Response:
        """Two steps: the form asks, a confirmation page shows what would be
        sent with a one-use token; only a POST with that token and the
        confirmation box ticked sends."""
        from bitcoinx import Address, Bitcoin, TxOutput

        wallet, chain = self.coord.wallet, self.coord.chain
        if wallet is None or chain is None:
            return await self.money_page(request, status=409, error="no wallet: channels are not enabled")
        form = await request.post()
        session = request[SESSION]
        token = str(form.get("confirm_token", ""))
        if token:
            pending = self.pending_withdrawals.pop(token, None)
            if pending is None or pending[0] != session.sid or time.monotonic() - pending[3] > 300:
                return await self.money_page(request, status=400, error="that confirmation has expired; start again")
            if form.get("confirm") != "yes":
                return await self.money_page(request, status=400,
                                             error="not sent: tick the box to confirm the withdrawal")
            _, address, amount, _ = pending
            try:
                out = TxOutput(amount, Address.from_string(address, Bitcoin).to_script())
                tx = wallet.build_payment([out])
            except Exception as e:  # noqa: BLE001 - the wallet's reason goes to the page
                return await self.money_page(request, status=400, error=f"not sent: {e}")
            from ..channels.chain import call

            try:
                txid = await call(chain, chain.broadcast, tx)
            except Exception as e:  # noqa: BLE001
                wallet.release(tx)
                return await self.money_page(request, status=502, error=f"not sent: the chain refused it ({e})")
            wallet.scan(tx)
            if wallet.path is not None:
                wallet.save()
            log.info("withdrawal of %d sat to %s by %s: %s", amount, address, session.user, txid)
            return await self.money_page(request, message=f"sent {amount} sat to {address}: transaction {txid}")
        address = str(form.get("address", "")).strip()
        try:
            Address.from_string(address, Bitcoin)
        except Exception:  # noqa: BLE001 - any parse failure is the same to the user
            return await self.money_page(request, status=400, error="that is not a Bitcoin SV address")
        try:
            amount = int(str(form.get("amount", "")).strip())
        except ValueError:
            return await self.money_page(request, status=400, error="amount: a whole number of satoshis")
        if not wallet.dust_limit <= amount <= wallet.balance():
            return await self.money_page(request, status=400, error=f"amount: between {wallet.dust_limit} and "
                                                                  f"{wallet.balance()} sat (the balance)")
        token = secrets.token_urlsafe(24)
        self.pending_withdrawals = {k: v for k, v in self.pending_withdrawals.items()
                                    if time.monotonic() - v[3] < 300}
        self.pending_withdrawals[token] = (session.sid, address, amount, time.monotonic())
        return await self.money_page(request, confirm={"token": token, "address": address, "amount": amount})

    async def history_page(self, request: web.Request) -> web.Response:
        span = request.query.get("span", "week")
        if span not in ("day", "week", "month"):
            raise web.HTTPBadRequest(text="span: day, week or month")
        now = self.clock()
        market = self._market()
        offset = market.utc_offset_s if market is not None else 0
        buckets = await asyncio.to_thread(data.history, self.coord, now, span, offset)
        prices = data.price_history(self.coord, now - {"day": 86_400, "week": 7 * 86_400, "month": 30 * 86_400}[span])
        return self.render(request, "history.html", span=span, buckets=buckets, prices=prices,
                           chart=charts(buckets, prices))

    async def devices_page(self, request: web.Request, status: int = 200, error: str = "", message: str = "") \
            -> web.Response:
        now = self.clock()
        rows = data.power_rows(self.coord, now)
        wired = [r for r in rows if r["wired"]]
        radio = [r for r in rows if not r["wired"]]
        alerts = data.alerts(self.coord, now, self.settings.wallet_low_sat, self.settings.channel_expiry_alert_s)
        return self.render(request, "devices.html", status=status, meters=radio, wired=wired,
                           relays=data.relays(self.coord), alerts=alerts, error=error, message=message)

    async def add_account(self, request: web.Request) -> web.Response:
        """The household adds a technician's account (devices and relays,
        never money or prices)."""
        form = await request.post()
        name, pw = str(form.get("name", ""))[:64], str(form.get("password", ""))[:300]
        try:
            await asyncio.to_thread(self.accounts.add, name, pw, TECHNICIAN)
        except AccountError as e:
            return await self.devices_page(request, status=400, error=f"account not made: {e}")
        log.info("technician account %r made in the web app by %s", name, request[SESSION].user)
        return await self.devices_page(request, message=f"technician account {name} made")

    async def relay_post(self, request: web.Request) -> web.Response:
        form = await request.post()
        name, want = str(form.get("relay", "")), str(form.get("state", ""))
        relay = (self.coord.relays or {}).get(name)
        if relay is None:
            return await self.devices_page(request, status=404, error=f"no relay {name[:32]!r}")
        if want not in ("connected", "disconnected"):
            return await self.devices_page(request, status=400, error="state: connected or disconnected")
        if form.get("confirm") != "yes":
            return await self.devices_page(request, status=400, error=f"relay {name} not switched: tick the box "
                                                                     "to confirm")
        relay.connect() if want == "connected" else relay.disconnect()
        log.info("relay %s %s from the web app by %s", name, want, request[SESSION].user)
        return await self.devices_page(request, message=f"relay {name}: {relay.state}")


def charts(buckets: list[data.Bucket], prices: list[tuple[int, int]]) -> dict[str, Any]:
    """Bar heights (0..100) for the energy and self-sufficiency charts, and
    a polyline for prices; drawn as inline SVG by the template."""
    top = max([max(b.import_wh, b.export_wh) for b in buckets] + [1])
    bars = [{"imp": 100 * b.import_wh / top, "exp": 100 * b.export_wh / top,
             "ss": None if b.self_sufficiency is None else 100 * b.self_sufficiency} for b in buckets]
    line = ""
    if prices:
        t0, t1 = prices[0][0], max(prices[-1][0], prices[0][0] + 1)
        pmax = max(p for _, p in prices) or 1
        line = " ".join(f"{1000 * (t - t0) / (t1 - t0):.1f},{100 - 100 * p / pmax:.1f}" for t, p in prices)
    return {"top_wh": top, "bars": bars, "price_line": line,
            "price_max": max((p for _, p in prices), default=0)}


__all__ = ["WebApp", "TECHNICIAN", "HOUSEHOLD"]
