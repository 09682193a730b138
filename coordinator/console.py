"""The technician console: one line in, text out.

The console runs inside the coordinator process, so it sees live state
(counters, relays, peers, channels) rather than a stale copy; the
`microgrid console` command only carries lines between a terminal or a
serial port and the coordinator's console socket (console_server.py).
Every error is one line that says what was wrong and what is allowed.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from .secrets import redact


class ConsoleTarget(Protocol):
    """What the console needs from a coordinator; optional subsystems are
    attributes that may be None (the command then says so)."""

    store: Any
    config: Any

    def status(self) -> dict[str, Any]: ...


class CommandError(Exception):
    pass


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _note(extra: Any) -> str:
    """What a technician must notice about a reading: resets and flags."""
    if not extra:
        return ""
    e = json.loads(extra) if isinstance(extra, str) else extra
    notes = []
    if "reset" in e:
        notes.append(f"RESET {e['reset']} (before: import {e.get('reset_import_wh', '?')} Wh,"
                     f" export {e.get('reset_export_wh', '?')} Wh)")
    flags = int(e.get("flags", 0) or 0)
    for bit, text in ((1, "below accuracy floor"), (2, "meter alarm"), (4, "time not set")):
        if flags & bit:
            notes.append(text)
    if "merged_from" in e:
        notes.append(f"merges from seq {e['merged_from']}")
    return "; ".join(notes)


class Console:
    def __init__(self, target: ConsoleTarget) -> None:
        self.target = target
        self.commands: dict[str, tuple[Callable[[list[str]], str], str]] = {
            "help": (self.cmd_help, "help [COMMAND]          list commands or explain one"),
            "status": (self.cmd_status, "status                  health, uptime and counters"),
            "meters": (self.cmd_meters, "meters                  registered meters with their last reading"),
            "readings": (self.cmd_readings, "readings METER [N]      last N readings of a meter (id or name; default 10)"),
            "peers": (self.cmd_peers, "peers                   overlay peers"),
            "updates": (self.cmd_updates, "updates                 firmware releases held, fetching and offered"),
            "orders": (self.cmd_orders, "orders                  open market orders"),
            "market": (self.cmd_market, "market [N]              the last N settled intervals (default 4)"),
            "prices": (self.cmd_prices, "prices [sell|buy SAT]   show this household's prices, or set a fixed one (sat/kWh)"),
            "channels": (self.cmd_channels, "channels                payment channels and balances"),
            "relay": (self.cmd_relay, "relay [NAME on|off]     show relays, or switch one"),
            "log": (self.cmd_log, "log [N]                 last N log lines (default 20)"),
            "config": (self.cmd_config, "config                  the running configuration"),
            "web": (self.cmd_web, "web                     the web app: address, certificate fingerprint, set-up code"),
        }

    def handle(self, line: str) -> str:
        """Run one command line; never raises for user input."""
        try:
            words = shlex.split(line)
        except ValueError as e:
            return f"error: cannot parse the line: {e}"
        if not words:
            return ""
        name, args = words[0].lower(), words[1:]
        entry = self.commands.get(name)
        if entry is None:
            return f"error: unknown command {name!r}; type 'help' for the list"
        try:
            return entry[0](args)
        except CommandError as e:
            return f"error: {e}"
        except Exception as e:  # noqa: BLE001 - a console must survive any fault
            return f"error: {name} failed: {type(e).__name__}: {e}"

    # -- commands ----------------------------------------------------------

    def _no_args(self, name: str, args: list[str]) -> None:
        if args:
            raise CommandError(f"{name} takes no arguments; usage: {self.commands[name][1].split('  ')[0]}")

    def _count(self, args: list[str], default: int, name: str) -> int:
        if not args:
            return default
        try:
            n = int(args[0])
        except ValueError:
            raise CommandError(f"{name}: N must be a whole number, got {args[0]!r}") from None
        if not 1 <= n <= 1000:
            raise CommandError(f"{name}: N must be between 1 and 1000, got {n}")
        return n

    def cmd_help(self, args: list[str]) -> str:
        if args:
            entry = self.commands.get(args[0].lower())
            if entry is None:
                raise CommandError(f"no command {args[0]!r}; type 'help' for the list")
            return entry[1]
        return "commands:\n" + "\n".join("  " + usage for _, usage in self.commands.values())

    def cmd_status(self, args: list[str]) -> str:
        self._no_args("status", args)
        s = self.target.status()
        return "\n".join(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in s.items())

    def cmd_meters(self, args: list[str]) -> str:
        self._no_args("meters", args)
        store = self.target.store
        rows = []
        for d in store.devices():
            last = store.last_reading(d.device_id)
            if last is None:
                rows.append([d.device_id, d.name, "-", "-", "-", "-", "never"])
            else:
                rows.append([d.device_id, d.name, last["seq"], last["import_wh"], last["export_wh"],
                             f"{last['power_w']:.0f}", _ts(last["time"])])
        if not rows:
            return "no meters registered"
        return _table(rows, ["device", "name", "seq", "import Wh", "export Wh", "power W", "last reading (UTC)"])

    def _resolve_meter(self, ref: str) -> str:
        for d in self.target.store.devices():
            if ref in (d.device_id, d.name):
                return str(d.device_id)
        raise CommandError(f"no meter {ref!r}; 'meters' lists them")

    def cmd_readings(self, args: list[str]) -> str:
        if not args or len(args) > 2:
            raise CommandError("usage: readings METER [N]")
        device = self._resolve_meter(args[0])
        n = self._count(args[1:], 10, "readings")
        rows = self.target.store.recent_readings(device, n)
        if not rows:
            return f"no readings from {device} yet"
        return _table(
            [[r["seq"], _ts(r["time"]), r["import_wh"], r["export_wh"], f"{r['power_w']:.0f}", f"{r['voltage_v']:.1f}",
              r["source"], _note(r.get("extra"))] for r in rows],
            ["seq", "time (UTC)", "import Wh", "export Wh", "power W", "voltage V", "source", "note"],
        )

    def _subsystem(self, attr: str, what: str) -> Any:
        sub = getattr(self.target, attr, None)
        if sub is None:
            raise CommandError(f"{what} is not configured on this coordinator")
        return sub

    def cmd_peers(self, args: list[str]) -> str:
        self._no_args("peers", args)
        rows = self._subsystem("console_peers", "the overlay")()
        return _table([list(r.values()) for r in rows], list(rows[0].keys())) if rows else "no peers"

    def cmd_web(self, args: list[str]) -> str:
        """Where the household's web app is, the fingerprint its browser
        should show, and the one-time set-up code until an account exists."""
        self._no_args("web", args)
        web = getattr(self.target, "web", None)
        if web is None:
            raise CommandError("the web app is off: set [web] enabled = true")
        return "\n".join(f"{k}: {v}" for k, v in web.status().items())

    def cmd_updates(self, args: list[str]) -> str:
        self._no_args("updates", args)
        from .updates.status import console_text

        return console_text(self._subsystem("console_updates", "firmware updates")())

    def cmd_orders(self, args: list[str]) -> str:
        self._no_args("orders", args)
        rows = self._subsystem("console_orders", "the market")()
        return _table([list(r.values()) for r in rows], list(rows[0].keys())) if rows else "no open orders"

    def cmd_market(self, args: list[str]) -> str:
        n = self._count(args, 4, "market")
        lines = self._subsystem("console_market", "the market")(n)
        return "\n".join(lines) if lines else "no interval settled yet"

    def cmd_prices(self, args: list[str]) -> str:
        market = getattr(self.target.config, "market", None)
        if market is None or not market.enabled:
            raise CommandError("the market is not configured on this coordinator")
        if not args:
            shown = {k: market.prices.get(k) for k in ("sell", "buy", "reserve_wh", "sell_floor_sat_per_kwh")}
            return "\n".join(f"{k} = {json.dumps(v)}" for k, v in shown.items() if v is not None) or "no prices set"
        if len(args) != 2 or args[0] not in ("sell", "buy"):
            raise CommandError("usage: prices sell|buy SAT_PER_KWH")
        try:
            value = int(args[1])
        except ValueError:
            raise CommandError(f"prices: SAT_PER_KWH must be a whole number, got {args[1]!r}") from None
        from .market.pricing import PricingError, parse_policy

        new = dict(market.prices)
        new[args[0]] = value
        try:
            parse_policy(new)
        except PricingError as e:
            raise CommandError(f"prices: {e}") from None
        market.prices = new  # the next interval's orders use it
        return (f"{args[0]} price set to {value} sat/kWh from the next order on "
                "(until restart: put it in [market.prices] to keep it)")

    def cmd_channels(self, args: list[str]) -> str:
        self._no_args("channels", args)
        rows = self._subsystem("console_channels", "payment channels")()
        return _table([list(r.values()) for r in rows], list(rows[0].keys())) if rows else "no channels"

    def cmd_relay(self, args: list[str]) -> str:
        relays = self._subsystem("relays", "relay control")
        if not args:
            if not relays:
                return "no relays configured"
            return _table([[name, r.state] for name, r in relays.items()], ["relay", "state"])
        if len(args) != 2 or args[1].lower() not in ("on", "off"):
            raise CommandError("usage: relay NAME on|off")
        relay = relays.get(args[0])
        if relay is None:
            raise CommandError(f"no relay {args[0]!r}; configured: {', '.join(relays) or 'none'}")
        if args[1].lower() == "on":
            relay.connect()
        else:
            relay.disconnect()
        return f"relay {args[0]}: {relay.state}"

    def cmd_log(self, args: list[str]) -> str:
        n = self._count(args, 20, "log")
        buffer = getattr(self.target, "log_buffer", None)
        lines = buffer.lines(n) if buffer is not None else []
        return "\n".join(lines) if lines else "log is empty"

    def cmd_config(self, args: list[str]) -> str:
        self._no_args("config", args)
        import dataclasses

        out = []
        for f in dataclasses.fields(self.target.config):
            section = getattr(self.target.config, f.name)
            out.append(f"[{f.name}]")
            for k, v in dataclasses.asdict(section).items():
                # Secrets as set/empty, URLs without credentials, in nested tables too.
                out.append(f"{k} = {json.dumps(redact(v, k))}")
        return "\n".join(out)
