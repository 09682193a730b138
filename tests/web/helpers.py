"""A real coordinator with its web app on 127.0.0.1 (market, channels on a
local ledger, an in-memory overlay, a simulated relay), and a logged-in
aiohttp client for the pages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp

from microgrid.coordinator.app import Coordinator, load_or_create_key
from microgrid.coordinator.channels.chain import LocalLedger
from microgrid.coordinator.config import from_dict
from microgrid.coordinator.overlay import MemoryNetwork, MemoryOverlay

from ..channels.conftest import FixedClock
from ..conftest import free_udp_port

ZONE = "elm"
T0 = 1_700_000_000 // 900 * 900 + 450  # in the middle of an interval
PASSWORD = "correct horse battery"


def config(tmp_path: Path, tls: bool = False, **web: Any) -> Any:
    (tmp_path / "pw").write_text("wallet-pw\n")
    return from_dict({
        "coap": {"port": free_udp_port()}, "store": {"path": str(tmp_path / "c.db")},
        "console": {"socket": str(tmp_path / "console.sock")},
        "overlay": {"enabled": True},
        "channels": {"enabled": True, "wallet_password_file": str(tmp_path / "pw"), "chain": "local:ledger.db",
                     "close_margin_s": 1_800, "lock_s": 7_200, "renew_before_s": 1_800},
        "market": {"enabled": True, "zone": ZONE, "import_tariff_sat_per_kwh": 250,
                   "export_tariff_sat_per_kwh": 40, "prices": {"sell": 100}},
        "gpio": {"backend": "simulated", "leds": False, "relays": {"relay_1": {}}},
        "web": {"enabled": True, "host": "127.0.0.1", "port": 0, "tls": tls, **web},
    })


async def start(tmp_path: Path, clock: FixedClock | None = None, tls: bool = False, **web: Any) -> Coordinator:
    cfg = config(tmp_path, tls, **web)
    clock = clock or FixedClock(T0)
    key = load_or_create_key(cfg.resolve(cfg.identity.key_file))
    ledger = LocalLedger(str(tmp_path / "ledger.db"), clock=clock)  # type: ignore[arg-type]
    overlay = MemoryOverlay(key, MemoryNetwork(clock.now))
    coord = Coordinator(cfg, clock=clock, chain=ledger, overlay=overlay)  # type: ignore[arg-type]
    await coord.start(defer_trading=True)
    return coord


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    m = CSRF.search(html)
    assert m, "no CSRF token on the page"
    return m.group(1)


async def set_up(session: aiohttp.ClientSession, base: str, code: str, name: str = "home") -> aiohttp.ClientResponse:
    async with session.get(base + "setup") as r:
        token = csrf_of(await r.text())
    return await session.post(base + "setup", data={"csrf": token, "code": code, "name": name,
                                                    "password": PASSWORD, "password2": PASSWORD},
                              allow_redirects=False)


async def log_in(session: aiohttp.ClientSession, base: str, name: str = "home",
                 password: str = PASSWORD) -> aiohttp.ClientResponse:
    async with session.get(base + "login") as r:
        token = csrf_of(await r.text())
    return await session.post(base + "login", data={"csrf": token, "name": name, "password": password},
                              allow_redirects=False)


async def page_csrf(session: aiohttp.ClientSession, base: str, path: str) -> str:
    async with session.get(base + path) as r:
        assert r.status == 200, (path, r.status)
        return csrf_of(await r.text())
