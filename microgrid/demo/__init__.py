"""`microgrid demo`: a whole neighbourhood on one machine, then a report.

Coordinators (default 3) with their meters (default 12 in all, running the
flashed firmware in the `micropython` executable) on loopback, one
simulated day in about 90 seconds; at the end an HTML report with plots,
a text summary, and `--json` for scripts. Ctrl-C stops every process it
started and still writes the report for what ran.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import calendar
import json
import logging
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .neighbourhood import DAY, MAX_COORDINATORS, MAX_DAYS, MAX_METERS, Neighbourhood

INTERVAL_S = 900  # market interval, simulated seconds
DEFAULT_START = calendar.timegm((2026, 6, 21, 0, 0, 0))  # midsummer: plenty of sun
MAX_SPEED = 5000  # --speed's ceiling at most: simulated s per real s
GRID_CHECK_AUTO_DAYS = 31  # --grid-check auto: a year would be 35,000 power flows


# Per participant, from the settlements and the channels (microgrid/demo/money.py
# defines paid and received): energy, then money.
PARTICIPANT_MONEY = ("bought_wh", "sold_wh", "utility_import_wh", "utility_export_wh", "p2p_paid_sat",
                     "p2p_received_sat", "grid_fee_sat", "utility_bill_sat", "utility_credit_sat")
_PAYER_KEYS = {"grid fee": "grid_fee_sat", "utility import": "utility_bill_sat"}
_PAYEE_KEYS = {"utility export": "utility_credit_sat"}


def collect(hood: Neighbourhood, elapsed: float, grid_check: bool = False) -> dict[str, Any]:
    from microgrid.coordinator.store.database import open_database
    from microgrid.coordinator.store.readings import ReadingStore

    from .accounting import Ledger

    hood.finish_incidents()
    ledger = Ledger(INTERVAL_S)
    participants = []
    produced = stored = rejected = 0
    for c in hood.plans:
        store = ReadingStore(open_database(c.directory / "coordinator.db"))
        c_stored = 0
        for m in c.meters:
            rows = list(store.readings(m.device_id))
            c_stored += len(rows)
            ledger.add_meter(c.name, rows)
            # After a power cut the sequence goes on from flash: the last
            # sequence number counts every reading made since the first boot.
            produced += int(m.summary.get("last_seq" if m.power_cuts else "produced", len(rows)))
            rejected += int(m.summary.get("rejected", 0))
        store.db.close()
        stored += c_stored
        tot = ledger.totals[c.name]
        participants.append({"coordinator": c.name, "meters": len(c.meters), "readings": c_stored,
                             "import_wh": tot.import_wh, "export_wh": tot.export_wh})
    market = collect_market(hood)
    names = {c.coordinator.key.public_key.to_hex(compressed=True): c.name for c in hood.plans if c.coordinator}
    for row in participants:
        for pub, name in names.items():
            if name == row["coordinator"]:
                row.update(market["by_participant"].get(pub, {}))
    intervals = []
    for start in ledger.intervals():
        gen = sum(ledger.at(p, start).export_wh for p in ledger.participants())
        cons = sum(ledger.at(p, start).import_wh for p in ledger.participants())
        st = market["settled"].get(start)
        cl = market["cleared"].get(start)
        intervals.append({
            "start": start, "generation_wh": gen, "consumption_wh": cons,
            "traded_wh": st.delivered_wh if st else 0,
            "clearing_price": cl.price_sat_per_kwh if cl else None,
            # The market's own figure (zone imports met by peers) once the
            # interval is settled; before that, what local generation could cover.
            "self_sufficiency": (st.self_sufficiency_ppm / 1_000_000 if st and st.self_sufficiency_ppm is not None
                                 else (min(gen, cons) / cons) if cons else None),
        })
    summary = {
        "readings_produced": produced,
        "readings_stored": stored,
        # Accepted by the coordinators as they came; the ones no longer
        # stored were thinned by retention (store/retention.py), their
        # energy kept by the next reading's cumulative counters.
        "readings_accepted": hood.counts()["readings"],
        "readings_thinned": hood.counts()["readings"] - stored,
        "readings_rejected": rejected,
        "energy_traded_wh": market["delivered_wh"],
        "energy_matched_wh": market["matched_wh"],
        "trades": market["trades"],
        "payment_updates": market["payment_updates"],
        # One definition (microgrid/demo/money.py): paid is what buyers
        # signed to sellers on their channels; value is delivered Wh times
        # the clearing price, exact; owed is what the settlements said.
        "paid_sat": market["paid_sat"],
        "p2p_value_sat": round(sum(m.value_msat for m in market["money"]) / 1000, 3),
        "on_ledger_sat": sum(m.on_ledger_sat for m in market["money"]),
        "money_reconciles": all(m.reconciles for m in market["money"])
                            and market["paid_sat"] == market.get("paid_sat_counted", market["paid_sat"])
                            and market["p2p_owed_sat"] == sum(m.owed_sat for m in market["money"]),
        "money_within_1_sat_per_interval": all(m.within_1_sat_per_interval for m in market["money"]),
        # Of paid_sat: streamed during intervals as energy arrived. Then what
        # the settlements said buyers owed sellers; paid ahead of them (for
        # intervals not yet settled when the demo stopped, or a net import
        # that later export in the interval offset); owed but not paid.
        "streamed_sat": market["streamed_sat"],
        "p2p_owed_sat": market["p2p_owed_sat"],
        "p2p_prepaid_sat": market["p2p_prepaid_sat"],
        "p2p_unpaid_sat": market["p2p_unpaid_sat"],
        # Times a seller opened its export relay on a buyer too far behind.
        "export_relay_cuts": market["export_relay_cuts"],
        "settlement_txs": market["settlement_txs"],
        "channels_opened": market["channels_opened"],
        "channel_rollovers": market["channel_rollovers"],
        "incidents": sorted(hood.incident_log, key=lambda i: i["at"]),
        # What an incident broke (a restart that failed, a directory record
        # not found again): any makes the run fail.
        "incident_failures": hood.incident_failures,
        "settlement_txs_verified": market["settlement_txs_verified"],
        "energy_balance_error_wh": ledger.balance_error_wh() + market["balance_error_wh"],
        "book_disagreements": market["disagreements"],
        # A hash of the economic results (trades, Wh, sat, book hashes):
        # two runs with the same seed must show the same one.
        "result_digest": market["result_digest"],
        "trading_errors": market["errors"],
        "coordinators": len(hood.plans),
        "meters": len(hood.all_meters()),
        "simulated_days": hood.days,
        "elapsed_s": round(elapsed, 1),
        "stopped_early": hood.stopped_early,
        # Real seconds: provisioning and start-up, the simulated days, closing.
        "timings_s": {k: round(v, 1) for k, v in hood.timings.items()},
        "conductor_steps": hood.conductor.steps,
        "conductor_phase_s": {k: round(v, 1) for k, v in hood.conductor.phase_s.items()},
        "conductor_waits_s": {k: [n, round(t, 1)] for k, (n, t) in sorted(hood.conductor.waits.items())},
    }
    channels = [{"name": f"{names.get(payer, payer[:8])} -> {names.get(payee, payee[:8])}",
                 "capacity_sat": hood.plans[0].coordinator.config.channels.capacity_sat if hood.plans[0].coordinator else 0,
                 "series": series} for (payer, payee), series in sorted(market["channel_series"].items())]
    data = {"summary": summary, "intervals": intervals, "participants": participants, "channels": channels,
            "money": [m.as_dict() for m in market["money"]],
            "economics": market["economics"]}
    if grid_check and market["settled"]:
        data["grid"] = run_grid_check(market["settled"], hood.peer_keys)
        summary["grid_intervals_outside_limits"] = data["grid"].get("summary", {}).get("intervals_outside_limits")
    return data


def run_grid_check(settled: dict[int, Any], households: list[str], network: str | None = None) -> dict[str, Any]:
    """The feeder's power flow of every settled interval (demo/grid.py);
    a check that cannot run is said in the report, the run goes on."""
    from .grid import NETWORK, grid_check

    try:
        grid = grid_check(settled, households, INTERVAL_S, network or NETWORK)
    except Exception as e:  # noqa: BLE001 - pandapower's failures are many; the report says which
        logging.getLogger("microgrid.demo").exception("grid check failed")
        return {"error": f"{type(e).__name__}: {e}"}
    return grid


def collect_market(hood: Neighbourhood) -> dict[str, Any]:
    """Trades, settlements, payments and settlement transactions, checked:
    every coordinator must have cleared the same books, every interval's
    energy must balance, and every closing transaction must be on the
    ledger and pass the script interpreter."""
    from bitcoinx import hash_to_hex_str

    from microgrid.coordinator.channels.txs import TransactionError, txid_hex, verify_transaction

    traders = [c.coordinator.trading for c in hood.plans if c.coordinator and c.coordinator.trading]
    out: dict[str, Any] = {"trades": 0, "matched_wh": 0, "delivered_wh": 0, "payment_updates": 0, "paid_sat": 0,
                           "streamed_sat": 0, "p2p_owed_sat": 0, "p2p_prepaid_sat": 0, "p2p_unpaid_sat": 0,
                           "export_relay_cuts": 0,
                           "settlement_txs": 0, "settlement_txs_verified": 0, "balance_error_wh": 0,
                           "disagreements": 0, "errors": 0, "settled": {}, "cleared": {}, "by_participant": {},
                           "channel_series": {}, "result_digest": None, "economics": {}, "money": [],
                           "channels_opened": 0, "channel_rollovers": 0}
    if not traders:
        return out
    for t in traders:
        # Rebuilt from the database at a restart: the current instance's.
        for seller in t.accounts.sellers():
            out["p2p_owed_sat"] += t.accounts.owed.get(seller, 0)
            out["p2p_prepaid_sat"] += t.accounts.prepaid(seller)
            out["p2p_unpaid_sat"] += t.accounts.unpaid(seller)
    # Counts kept in memory: the instances before a restart count too
    # (after the current ones, which come first in `cleared` and `settled`).
    for t in traders + hood.retired_traders:
        out["payment_updates"] += t.stats.payment_updates
        out["paid_sat"] += t.stats.paid_sat
        out["streamed_sat"] += t.stats.streamed_sat
        out["errors"] += t.stats.errors
        out["export_relay_cuts"] += t.credit.disconnects
        payer = t.public_hex
        for when, payee, acked in t.stats.payment_log:
            out["channel_series"].setdefault((payer, payee), []).append([when, acked])
        for start, cleared in t.stats.cleared.items():
            first = out["cleared"].setdefault(start, cleared)
            if first.hash != cleared.hash:
                out["disagreements"] += 1
        for start, s in t.stats.settled.items():
            out["settled"].setdefault(start, s)
    for series in out["channel_series"].values():
        series.sort(key=lambda point: point[0])  # a restarted payer's two instances, in time order
    for start, cleared in out["cleared"].items():
        out["trades"] += len(cleared.trades)
        out["matched_wh"] += cleared.volume_wh
    for start, s in out["settled"].items():
        out["delivered_wh"] += s.delivered_wh
        # The balance, recomputed here rather than trusted.
        err = abs(s.export_wh + s.utility_import_wh - s.import_wh - s.utility_export_wh)
        for r in s.participants:
            err += abs(r.export_wh - r.sold_wh - r.utility_export_wh) + abs(r.import_wh - r.bought_wh - r.utility_import_wh)
            row = out["by_participant"].setdefault(r.participant, dict.fromkeys(PARTICIPANT_MONEY, 0))
            row["bought_wh"] += r.bought_wh
            row["sold_wh"] += r.sold_wh
            row["utility_import_wh"] += r.utility_import_wh
            row["utility_export_wh"] += r.utility_export_wh
        for p in s.payments:
            for who, key in ((p.payer, _PAYER_KEYS.get(p.kind)), (p.payee, _PAYEE_KEYS.get(p.kind))):
                if key and who in out["by_participant"]:
                    out["by_participant"][who][key] += p.sats
        out["balance_error_wh"] += err
    from .digest import economic_results, result_digest

    # Funded channels only: an open a stop cut short never carried money.
    funded = [(t.public_hex, e.peer.hex()) for t in traders for e in t.node.channels.values()
              if e.role == "payer" and e.channel.state.value in ("open", "closing", "closed", "refunded")]
    pairs = set(funded)
    out["channels_opened"] = len(funded)
    out["channel_rollovers"] = out["channels_opened"] - len(pairs)
    out["economics"] = economic_results(out["cleared"], out["settled"], traders)
    out["result_digest"] = result_digest(out["economics"])
    from .money import paid_by_buyer, reconcile

    names = {c.coordinator.key.public_key.to_hex(compressed=True): c.name for c in hood.plans if c.coordinator}
    out["money"] = reconcile(out["settled"], traders, names, hood.ledger)
    for pub, sats in paid_by_buyer(traders).items():
        out["by_participant"].setdefault(pub, dict.fromkeys(PARTICIPANT_MONEY, 0))["p2p_paid_sat"] = sats
    # The trading services' own count of what they signed must agree.
    out["paid_sat_counted"], out["paid_sat"] = out["paid_sat"], sum(m.paid_sat for m in out["money"])
    for m in out["money"]:
        out["by_participant"].setdefault(m.seller, dict.fromkeys(PARTICIPANT_MONEY, 0))["p2p_received_sat"] = \
            m.on_ledger_sat
    ledger = hood.ledger
    for c in hood.plans:
        trading = c.coordinator.trading if c.coordinator else None
        if trading is None:
            continue
        for cid, entry in trading.node.channels.items():
            tx = getattr(entry.channel, "closing_tx", None)
            if entry.role != "payee" or tx is None:
                continue
            out["settlement_txs"] += 1
            try:
                prevouts = []
                for txin in tx.inputs:
                    funding = ledger.transaction(hash_to_hex_str(txin.prev_hash))
                    prevouts.append(funding.outputs[txin.prev_idx])
                verify_transaction(tx, prevouts)
                if ledger.transaction(txid_hex(tx)) is not None:
                    out["settlement_txs_verified"] += 1
            except (TransactionError, AttributeError, IndexError) as e:
                logging.getLogger("microgrid.demo").error("settlement tx of %s fails verification: %s", cid.hex(), e)
    return out


async def run_demo(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    from .progress import Progress

    speed = args.speed  # a ceiling: None runs as fast as the slowest participant allows
    sim_start = DEFAULT_START + int(args.start_hour * 3600)
    incidents = args.incidents == "on" or (args.incidents == "auto" and args.days >= 2)
    hood = Neighbourhood(out_dir, args.coordinators, args.meters, args.days, args.seed, speed, sim_start,
                         increment_wh=args.increment_wh, incidents=incidents)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    progress = Progress(args.days * DAY, sim_start, enabled=not args.quiet)
    started = time.time()
    try:
        await hood.start()
        hood.timings["setup_s"] = time.time() - started
        runner = asyncio.ensure_future(hood.run(progress))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([runner, stopper], return_when=asyncio.FIRST_COMPLETED)
        for t in (runner, stopper):
            t.cancel()
        if stop.is_set():
            print("\ninterrupted: stopping every process and writing the report for what ran", file=sys.stderr)
    finally:
        t_stop = time.time()
        hood.timings["simulation_s"] = t_stop - started - hood.timings.get("setup_s", 0.0)
        await hood.stop()
        hood.timings["closing_s"] = time.time() - t_stop
        progress.finish()
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
    grid = args.grid_check == "on" or (args.grid_check == "auto" and 1 <= args.days <= GRID_CHECK_AUTO_DAYS)
    data = collect(hood, time.time() - started, grid_check=grid)
    data["params"] = {"coordinators": args.coordinators, "meters": args.meters, "days": args.days,
                      "seed": args.seed, "speed": round(speed, 1) if speed else None,
                      "start": datetime.fromtimestamp(sim_start, timezone.utc).isoformat(),
                      "increment_wh": args.increment_wh, "reading_s": int(hood.reading_s)}
    market = hood.plans[0].coordinator.config.market if hood.plans and hood.plans[0].coordinator else None
    if market is not None:
        offset = int(market.utc_offset_s)
        sign, mins = ("+" if offset >= 0 else "-"), abs(offset) // 60
        data["timezone"] = {"name": "UTC" if offset == 0 else f"UTC{sign}{mins // 60:02d}:{mins % 60:02d}",
                            "offset_s": offset}
        data["tariff"] = {"import_sat_per_kwh": market.import_tariff_sat_per_kwh,
                          "export_sat_per_kwh": market.export_tariff_sat_per_kwh}
    start_day = datetime.fromtimestamp(sim_start, timezone.utc).strftime("%d %B %Y").lstrip("0")
    data["title"] = (f"A simulated street of {args.coordinators} households with {args.meters} meters, "
                     f"{args.days:g} day(s) from {start_day}, seed {args.seed}")
    return data


def grid_line(grid: dict[str, Any]) -> str:
    """The grid check in one line of the text summary."""
    if "error" in grid:
        return f"the power flow check could not run ({grid['error']})"
    s = grid["summary"]
    if not s["intervals"] or s["min_vm_pu"] is None:
        return f"{s['intervals']} interval(s) checked on {grid['network']}, no power flow solved"
    from .grid import NOMINAL_V

    return (f"{s['intervals']} intervals checked on {grid['network']}: voltage {s['min_vm_pu'] * NOMINAL_V:.1f} to "
            f"{s['max_vm_pu'] * NOMINAL_V:.1f} V, cables at most {s['max_line_loading_percent']:.0f} % and the "
            f"transformer {s['max_trafo_loading_percent']:.0f} % loaded, {s['intervals_outside_limits']} interval(s) "
            f"outside the limits")


def _positive_limited(name: str, lo: float, hi: float, kind: type = int) -> Any:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be between {lo} and {hi} on a 2-core machine, got {v}")
        return v
    return parse


def _run(args: argparse.Namespace) -> int:
    from microgrid.report import write_report

    if args.meters < args.coordinators:
        print(f"error: --meters ({args.meters}) must be at least --coordinators ({args.coordinators})", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else Path("demo-out") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=getattr(logging, os.environ.get("MICROGRID_DEMO_LOG", "WARNING")), filename=str(out_dir / "demo.log"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        data = asyncio.run(run_demo(args, out_dir))
    except Exception as e:  # noqa: BLE001 - one line for the user, details in the log
        logging.getLogger("microgrid.demo").exception("demo failed")
        print(f"error: demo failed: {e} (details in {out_dir / 'demo.log'})", file=sys.stderr)
        return 1
    # What result_digest hashes, to find where two runs part.
    (out_dir / "economics.json").write_text(json.dumps(data.pop("economics"), indent=1, sort_keys=True))
    page = write_report(out_dir, data)
    summary = data["summary"]
    summary["report"] = str(page)
    summary["out_dir"] = str(out_dir)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"neighbourhood: {summary['coordinators']} coordinators, {summary['meters']} meters, "
              f"{summary['simulated_days']} simulated day(s) in {summary['elapsed_s']} s")
        print(f"readings: produced {summary['readings_produced']}, accepted {summary['readings_accepted']}, "
              f"still stored {summary['readings_stored']} ({summary['readings_thinned']} thinned by retention), "
              f"rejected {summary['readings_rejected']}")
        print(f"market: {summary['trades']} trades, {summary['energy_matched_wh']} Wh matched, "
              f"{summary['energy_traded_wh']} Wh delivered and paid peer to peer "
              f"({summary['book_disagreements']} book disagreements)")
        print(f"payments: {summary['payment_updates']} channel updates, {summary['paid_sat']} sat "
              f"({summary['streamed_sat']} streamed as energy arrived), {summary['settlement_txs']} settlement "
              f"transactions ({summary['settlement_txs_verified']} verified by the script interpreter), "
              f"{summary['p2p_unpaid_sat']} sat unpaid, export relay cut {summary['export_relay_cuts']} time(s)")
        print(f"channels: {summary['channels_opened']} opened, {summary['channel_rollovers']} of them rollovers")
        for inc in summary["incidents"]:
            when = datetime.fromtimestamp(inc["at"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            print(f"incident: {when} {inc['what']}")
        print(f"energy balance error: {summary['energy_balance_error_wh']} Wh")
        if "grid" in data:
            print(f"feeder: {grid_line(data['grid'])}")
        print("money per seller (paid = signed by buyers on channels; value = delivered Wh x clearing price):")
        for m in data["money"]:
            print(f"  {m['line']}")
        print("  every seller's ledger receipts within 1 sat per interval of delivered Wh x clearing price: "
              + ("yes" if summary["money_within_1_sat_per_interval"] else "NO"))
        print(f"result digest: {summary['result_digest']}")
        print(f"report: {page}")
    for failure in summary["incident_failures"]:
        print(f"error: incident: {failure}", file=sys.stderr)
    ok = not summary["incident_failures"] and summary["money_reconciles"] and \
        summary["money_within_1_sat_per_interval"] and summary["readings_stored"] > 0 and \
        summary["readings_produced"] == summary["readings_accepted"] and summary["readings_rejected"] == 0 and summary["energy_balance_error_wh"] == 0
    return 0 if ok or summary["stopped_early"] else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="a neighbourhood on one machine: coordinators, MicroPython meters, market, channels; then a report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--coordinators", type=_positive_limited("--coordinators", 1, MAX_COORDINATORS), default=3,
                   help=f"coordinators (households), 1..{MAX_COORDINATORS} (default 3)")
    p.add_argument("--meters", type=_positive_limited("--meters", 1, MAX_METERS), default=12,
                   help=f"meters in all, each a micropython process, 1..{MAX_METERS} (default 12)")
    p.add_argument("--days", type=_positive_limited("--days", 0.01, MAX_DAYS, float), default=1.0,
                   help=f"simulated days, 0.01..{MAX_DAYS} (default 1)")
    p.add_argument("--seed", type=int, default=1, help="seed for profiles and keys (default 1)")
    p.add_argument("--speed", type=_positive_limited("--speed", 1, MAX_SPEED, float), default=None,
                   help=f"at most this many simulated seconds per real second, 1..{MAX_SPEED} (default: no "
                        f"ceiling; simulated time waits for the slowest meter or coordinator either way, so any "
                        f"--speed, {MAX_SPEED} included, gives the same result_digest, only later)")
    p.add_argument("--start-hour", type=_positive_limited("--start-hour", 0, 23.99, float), default=0.0,
                   help="simulated time of day to start at, in hours (default 0: midnight)")
    p.add_argument("--increment-wh", type=_positive_limited("--increment-wh", 1, 10000), default=10,
                   help="energy paid for by each channel update, Wh (default 10)")
    p.add_argument("--incidents", choices=("auto", "on", "off"), default="auto",
                   help="a restart of every coordinator and power cuts of several meters, at times the seed "
                        "picks; the summary says what each did (auto: on for runs of 2 days or more)")
    p.add_argument("--grid-check", choices=("auto", "on", "off"), default="auto",
                   help="after the run, a power flow of every settled interval on a benchmark low-voltage feeder "
                        f"with the households on it, in the report (auto: on for runs of 1 to "
                        f"{GRID_CHECK_AUTO_DAYS} days; some 0.05 s of CPU per interval)")
    p.add_argument("--out", help="folder for databases, images, logs and the report (default demo-out/<time>)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
