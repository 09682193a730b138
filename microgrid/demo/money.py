"""Money that reconciles to the satoshi: one definition for every figure.

Definitions (the summary, the text output and the report all use these):

- **value**: energy a seller delivered to its buyers, as each interval's
  settlement found it, times that interval's clearing price, exact in
  millisatoshi (docs/MARKET.md);
- **owed**: what the settlements said the buyers owe the seller: the value
  per buyer and interval, rounded up once to whole satoshis, so it exceeds
  the value by less than 1 sat per buyer and interval (`rounding`);
- **paid**: what the buyers signed to the seller on their payment channels
  (streamed as energy arrived, then topped up after each settlement), as
  the buyers' channel journals record each update; the seller's side holds
  the same (`held`): the latest update on each channel, what it can claim;
- **ahead**: paid minus owed. Positive when a buyer's stream ran ahead of
  the settlement (the seller's net export fell later in the interval); it
  counts against what that buyer owes next, so it is a credit, not a loss;
  negative when something owed is still unpaid;
- **on the ledger**: what the closing transactions paid the seller, read
  back from the ledger (channel fees are the payer's: they come out of its
  change, never out of the seller's output).

The reconciliation holds when on the ledger == held == paid (nothing lost
between signing, holding and closing), every channel is closed, and paid == value + rounding + ahead with 0 <=
rounding < the number of buyer-interval pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

P2P = "p2p"


@dataclass
class SellerMoney:
    seller: str  # public key hex
    name: str
    delivered_wh: int = 0
    value_msat: int = 0
    owed_sat: int = 0
    pairs: int = 0  # buyer-interval pairs that were owed something
    intervals: int = 0  # intervals in which it delivered anything
    paid_sat: int = 0
    held_sat: int = 0
    on_ledger_sat: int = 0
    channels_closed: int = 0
    channels_open: int = 0

    @property
    def rounding_msat(self) -> int:
        return self.owed_sat * 1000 - self.value_msat

    @property
    def ahead_sat(self) -> int:
        return self.paid_sat - self.owed_sat

    @property
    def reconciles(self) -> bool:
        return (self.on_ledger_sat == self.held_sat == self.paid_sat and self.channels_open == 0
                and 0 <= self.rounding_msat < 1000 * max(self.pairs, 1))

    @property
    def within_1_sat_per_interval(self) -> bool:
        """The ledger's receipts against delivered Wh x clearing price:
        at most 1 sat apart per interval it sold in (rounding, and a
        stream that ran ahead in the last intervals, whose credit had no
        later payment to count against)."""
        return abs(self.on_ledger_sat * 1000 - self.value_msat) <= 1000 * max(self.intervals, 1)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(value_sat=round(self.value_msat / 1000, 3), rounding_sat=round(self.rounding_msat / 1000, 3),
                 ahead_sat=self.ahead_sat, reconciles=self.reconciles,
                 within_1_sat_per_interval=self.within_1_sat_per_interval, line=self.line())
        return d

    def line(self) -> str:
        return (f"{self.name}: delivered {self.delivered_wh:,} Wh worth {self.value_msat / 1000:,.3f} sat at the "
                f"clearing prices; owed {self.owed_sat:,} sat (+{self.rounding_msat / 1000:.3f} rounding over "
                f"{self.pairs} buyer-intervals); paid {self.paid_sat:,} sat ({self.ahead_sat:+,} ahead); "
                f"on the ledger {self.on_ledger_sat:,} sat in {self.channels_closed} closed channel(s)"
                + (f", {self.channels_open} still open" if self.channels_open else "")
                + (": reconciles" if self.reconciles else ": DOES NOT RECONCILE")
                + ("" if self.within_1_sat_per_interval else
                   f" (ledger {self.on_ledger_sat - self.value_msat / 1000:+,.3f} sat from the value over "
                   f"{self.intervals} interval(s))"))


def payee_output(tx: Any, payee_script: bytes) -> int:
    """What a closing transaction pays to `payee_script`."""
    return sum(o.value for o in tx.outputs if bytes(o.script_pubkey) == bytes(payee_script))


def reconcile(settled: dict[int, Any], traders: Iterable[Any], names: dict[str, str], ledger: Any) -> list[SellerMoney]:
    """One row per coordinator that sold or was paid anything."""
    from microgrid.coordinator.channels.txs import txid_hex

    rows: dict[str, SellerMoney] = {}

    def row(pub: str) -> SellerMoney:
        if pub not in rows:
            rows[pub] = SellerMoney(pub, names.get(pub, pub[:8]))
        return rows[pub]

    for start in sorted(settled):
        sold_in = set()
        for p in settled[start].payments:
            if p.kind != P2P or p.payer == p.payee:
                continue
            r = row(p.payee)
            if p.payee not in sold_in:
                sold_in.add(p.payee)
                r.intervals += 1
            r.delivered_wh += p.wh
            r.value_msat += p.msat
            r.owed_sat += p.sats
            r.pairs += 1
    for t in traders:
        for entry in t.node.channels.values():
            if entry.role != "payee":
                continue
            r = row(t.public_hex)
            ch = entry.channel
            held = ch.latest.amount if ch.latest else 0
            r.held_sat += held
            tx = getattr(ch, "closing_tx", None)
            if tx is not None and ledger is not None and ledger.transaction(txid_hex(tx)) is not None:
                r.channels_closed += 1
                r.on_ledger_sat += payee_output(tx, ch.terms.payee_script)
            elif held:
                r.channels_open += 1
        for cid, entry in t.node.channels.items():
            if entry.role != "payer" or not entry.peer:
                continue
            signed = sum(int(ev["amount"] or 0) for ev in t.node.store.events(cid)
                         if str(ev["kind"]).startswith("trade-"))
            if signed:
                row(entry.peer.hex()).paid_sat += signed
    return [rows[k] for k in sorted(rows, key=lambda k: rows[k].name)]


def paid_by_buyer(traders: Iterable[Any]) -> dict[str, int]:
    """Per buyer (public key hex): what it signed to sellers, from its
    channel journals (the same records `paid` is summed from above)."""
    out: dict[str, int] = {}
    for t in traders:
        for cid, entry in t.node.channels.items():
            if entry.role != "payer":
                continue
            signed = sum(int(ev["amount"] or 0) for ev in t.node.store.events(cid)
                         if str(ev["kind"]).startswith("trade-"))
            out[t.public_hex] = out.get(t.public_hex, 0) + signed
    return out
