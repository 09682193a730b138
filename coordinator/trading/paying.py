"""A buyer's payments: signed channel updates to the sellers it bought
from, as energy arrives (streamed, each poll of the interval) and after the
settlement (whatever the stream did not cover).

Both paths take one lock, so a stream and a settlement never both pay the
same shortfall; both count what was signed, acknowledged or not (a
channel resends a pending update before the next), so a lost
acknowledgement neither pays twice nor forgets a payment. Each update is
journalled in the channel store with why it was made (`stream` or
`settle`), its Wh and the figures it came from, so a dispute can be
replayed and a restart can pick an interval's stream up where it was
(`journal_streamed`). Which channel carries a payment, and rolling over to
the next, is the payer's business (trading/payer.py); what is due is
delivery's (trading/delivery.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ..channels.protocol import ChannelNode
from ..clock import Clock
from ..market.clearing import ClearedInterval
from ..store.dues import Due
from .delivery import SellerAccounts, streamed_due
from .payer import ChannelPayer

log = logging.getLogger("microgrid.trading")


def split_increments(wh: int, sats: int, increment_wh: int) -> list[int]:
    """Sats per delivered increment: ceil(wh / increment) updates whose
    amounts add up to exactly `sats` (earlier ones take the remainder)."""
    if sats <= 0 or wh <= 0:
        return []
    n = max(1, -(-wh // max(increment_wh, 1)))
    n = min(n, sats)  # never an update of 0 sat
    base, rem = divmod(sats, n)
    return [base + (1 if i < rem else 0) for i in range(n)]


class BuyerPayments:
    """What we have signed to each seller and owe it (`accounts`), and per
    interval what was streamed (`streamed`: start -> seller hex -> (Wh,
    sat))."""

    def __init__(self, node: ChannelNode, payer: ChannelPayer, clock: Clock, stats: Any, public_hex: str,
                 increment_wh: int, accounts: SellerAccounts) -> None:
        self.node = node
        self.payer = payer
        self.clock = clock
        self.stats = stats  # TradingStats: payment_updates, paid_sat, streamed_sat, errors, payment_log
        self.public_hex = public_hex
        self.increment_wh = increment_wh
        self.accounts = accounts
        self.streamed: dict[int, dict[str, tuple[int, int]]] = {}
        self.lock = asyncio.Lock()

    async def send(self, payee_hex: str, amounts: list[int], why: str, wh: int, **evidence: int) -> None:
        """One channel update per amount to `payee_hex`. What is signed
        counts as paid even when an acknowledgement is lost, because the
        channel resends a pending update before the next. The channel's
        journal keeps why (`stream` or `settle`), for how many Wh, and the
        figures it was worked out from, so a dispute can be replayed."""
        before = {cid: ch.paid for cid, ch in self.payer.channels(payee_hex)}
        acked = None
        try:
            for amount in amounts:
                acked = await self.payer.pay_one(payee_hex, amount)
                self.stats.payment_updates += 1
        finally:
            # Paid is what is signed (the payee can claim it), acknowledged
            # or not: an update in flight when we stop counts, as it does
            # in the accounts. A rollover spreads one call over two
            # channels; each journal gets its part (the Wh go with the first).
            wh_left = wh
            for cid, ch in self.payer.channels(payee_hex):
                signed = ch.paid - before.get(cid, 0)
                if not signed:
                    continue
                self.stats.paid_sat += signed
                self.accounts.add_signed(payee_hex, signed)
                self.node.store.record_event(cid, self.clock.now(), f"trade-{why}", wh=wh_left, amount=signed,
                                             seq=ch.sent.seq if ch.sent else None,
                                             detail=json.dumps(evidence, sort_keys=True))
                wh_left = 0
            if acked is not None:
                self.stats.payment_log.append((self.clock.now(), payee_hex, acked))

    async def settle(self, interval_start: int, dues: list[Due]) -> None:
        """Pay each seller what these (newly recorded) dues add to what we
        owe it, and anything still unpaid from before (a failed payment, a
        restart between settling and paying), less what we have already
        signed to it. One seller failing does not hold up the others."""
        streamed = self.streamed.get(interval_start, {})
        async with self.lock:
            # What the chain settled counts, not what we signed: a channel
            # the seller closed at an older state, or we refunded, paid it
            # less (see channels.protocol.signed_amount); the rest is paid
            # here, through the next channel.
            self.accounts.signed = self.node.signed_by_peer("payer")
            new_wh: dict[str, int] = {}
            for d in dues:
                if d.payer == self.public_hex:
                    self.accounts.settle(d.payee, d.sats)
                    new_wh[d.payee] = new_wh.get(d.payee, 0) + d.wh
            behind = {s for s in self.accounts.sellers() if self.accounts.unpaid(s) > 0}
            for payee in sorted(behind):
                due = self.accounts.unpaid(payee)
                wh_left = max(new_wh.get(payee, 0) - streamed.get(payee, (0, 0))[0], 1)
                try:
                    await self.send(payee, split_increments(wh_left, due, self.increment_wh), "settle",
                                     wh_left, interval=interval_start, owed=self.accounts.owed.get(payee, 0))
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.stats.errors += 1
                    log.warning("paying %d sat owed to %s failed (retried after the next settlement): %s",
                                due, payee[:16], e)

    async def stream(self, cleared: ClearedInterval, live: dict[bytes, tuple[int, int]], import_wh: int) -> None:
        """One poll of the interval: pay each seller what its trades make
        due, by our import and its published export so far (`live`),
        beyond what we streamed to it this interval."""
        me, start = bytes.fromhex(self.public_hex), cleared.interval_start
        sent = self.streamed.setdefault(start, {})
        exports = {p: v[0] for p, v in live.items()}
        due_now = streamed_due(cleared.trades, me, import_wh, self.increment_wh, exports)
        for seller, due in sorted(due_now.items()):
            if seller == me:  # our own sell order matched our buy: nothing to pay
                continue
            payee = seller.hex()
            wh_sent, sat_sent = sent.get(payee, (0, 0))
            if due.sats <= sat_sent:
                continue
            async with self.lock:
                before = self.accounts.signed.get(payee, 0)  # under the lock: settlement pays this seller too
                try:
                    await self.send(payee, split_increments(max(due.wh - wh_sent, self.increment_wh),
                                                             due.sats - sat_sent, self.increment_wh),
                                     "stream", due.wh - wh_sent, interval=start, import_wh=import_wh,
                                     seller_export_wh=exports.get(seller, 0), due_sat=due.sats)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.warning("streaming %d sat to %s for interval %d failed (retried at the next poll, "
                                "settled after the interval): %s", due.sats - sat_sent, payee[:16], start, e)
                finally:
                    # What was signed counts, even from an update that failed.
                    signed = self.accounts.signed.get(payee, 0) - before
                    if signed:
                        sent[payee] = (due.wh if signed >= due.sats - sat_sent else wh_sent, sat_sent + signed)
                        self.stats.streamed_sat += signed

    def journal_streamed(self, start: int) -> dict[str, tuple[int, int]]:
        """Per seller, the (Wh, sat) our journals record streamed for the
        interval at `start` (see `send`)."""
        out: dict[str, tuple[int, int]] = {}
        for cid, e in self.node.channels.items():
            if e.role != "payer":
                continue
            for ev in self.node.store.events(cid):
                if ev["kind"] != "trade-stream" or not ev["detail"]:
                    continue
                try:
                    interval = json.loads(ev["detail"]).get("interval")
                except ValueError:
                    continue
                if interval == start:
                    wh, sats = out.get(e.peer.hex(), (0, 0))
                    out[e.peer.hex()] = (wh + int(ev["wh"] or 0), sats + int(ev["amount"] or 0))
        return out
