"""Debian's Chromium, headless, driven over the DevTools protocol (a
WebSocket that aiohttp's client speaks): navigate, run a line of script in
the page, wait for a page to load, take a screenshot. Just enough for the
web app's tests; no browser download, no driver binary."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--disable-extensions", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (scripts/setup.sh does it)")
    return path


class Browser:
    def __init__(self, profile: Path, width: int, height: int, extra: list[str]) -> None:
        self.profile = profile
        self.size = (width, height)
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.errors: list[str] = []  # uncaught exceptions and console errors in the pages

    async def __aenter__(self) -> "Browser":
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([chromium_path(), *FLAGS, *self.extra, f"--user-data-dir={self.profile}",
                                      f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError("chromium did not open its DevTools port")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self.http = aiohttp.ClientSession()
        for _ in range(100):
            async with self.http.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [t for t in await r.json() if t.get("type") == "page"]
            if pages:
                break
            await asyncio.sleep(0.05)
        self.ws = await self.http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                        deviceScaleFactor=1, mobile=True)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(RuntimeError(str(data["error"])))
                    else:
                        fut.set_result(data.get("result", {}))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(data["params"]["exceptionDetails"])[:500])
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"].get("type") == "error":
                self.errors.append(json.dumps(data["params"].get("args"))[:500])

    async def send(self, method: str, **params: Any) -> Any:
        assert self.ws is not None
        self._id += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[self._id] = fut
        await self.ws.send_str(json.dumps({"id": self._id, "method": method, "params": params}))
        return await asyncio.wait_for(fut, 30)

    async def js(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    async def wait_for_page(self, path: str, timeout: float = 20) -> None:
        """Until the page at `path` has loaded (a click's navigation too)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if await self.js(f"location.pathname === {json.dumps(path)} && document.readyState === 'complete'"):
                    return
            except RuntimeError:
                pass  # the old page went away mid-evaluation
            if time.monotonic() > deadline:
                raise AssertionError(f"page {path} did not load; at {await self.js('location.href')}: "
                                     f"{(await self.js('document.body.innerText'))[:300]!r}")
            await asyncio.sleep(0.05)

    async def open(self, url: str, path: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for_page(path)

    async def click_and_wait(self, selector: str, path: str) -> None:
        await self.js("window.__left = true")
        await self.js(f"document.querySelector({json.dumps(selector)}).click()")
        deadline = time.monotonic() + 20
        while True:  # the old page is gone once the marker is
            try:
                if not await self.js("window.__left === true"):
                    break
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"clicking {selector} did not load a page")
            await asyncio.sleep(0.05)
        await self.wait_for_page(path)

    async def fill(self, fields: dict[str, str]) -> None:
        for selector, value in fields.items():
            await self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                          f"if (e.type === 'checkbox' || e.type === 'radio') e.checked = {json.dumps(value)} !== ''; "
                          f"else e.value = {json.dumps(value)}; }})()")

    async def screenshot(self, path: Path) -> bytes:
        r = await self.send("Page.captureScreenshot", format="png")
        png = base64.b64decode(r["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return png
