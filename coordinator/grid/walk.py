"""The matching walk and price when the zone enforces its network limits.

Pure and integer-only, like the rest of the clearing
(coordinator/market/clearing.py calls `network_clearing` when its
ZoneRules carry GridLimits; without them this module is not used). The
rules, for neighbours in docs/GRID.md:

1. Priority as always (clearing rule 3): buyers by effective limit, highest
   first; sellers by limit, lowest first.
2. Walk the buyers in priority order. Each buyer meets the open sellers in
   their priority order while its effective limit >= the seller's ask, and
   takes min(buyer's rest, seller's rest, feeder capacity left, network
   room) Wh, where the network room of the pair is the most Wh from the
   seller's node to the buyer's node that keeps every row of the
   GridLimits within its budget, given the trades already made. A pair
   with no room is passed over (the seller stays open for later buyers,
   at other places of the feeder); a pair with less room than it wants
   trades what fits. An order whose owner has no node cannot trade.
   The walk stops at the first buyer that cannot meet the cheapest open
   ask, or when the feeder capacity is used up.
3. Where the network never cut a trade, this is exactly the walk without a
   network (same trades, same order) and the price follows clearing rule 5
   unchanged: the cleared interval differs only by carrying the limits'
   digest.
4. Where it did (`binding`): accepted = orders that got any energy;
       hi = lowest accepted bid
       lo = max(highest accepted ask, highest rejected bid if <= hi)
   If lo <= hi, one uniform price floor((lo + hi) / 2) (pay-as-clear), as
   with a binding feeder: the buyers that got the scarce capacity pay at
   least what the best unserved buyer bid, and no asks blocked behind the
   constraint pull the price down (they could not deliver). If lo > hi the
   wires made a dearer seller serve a buyer while a cheaper one was cut:
   no single price respects every limit, so each trade is priced at its
   own pair's midpoint (pay-as-bid's rule), and the reported price is the
   volume-weighted mean of those, rounded down (an indication only).
"""

from __future__ import annotations

from itertools import compress, repeat
from operator import floordiv, mul, sub
from typing import Iterator, Mapping, NamedTuple, Sequence

from .limits import GridLimits

PAY_AS_BID = "pay-as-bid"  # = coordinator.market.clearing.PAY_AS_BID, not imported: no cycle


class Walked(NamedTuple):
    mb: list[int]  # the trades as columns: buy order index, sell order index, Wh, price
    ms: list[int]
    mq: list[int]
    prices: list[int]
    volume: int
    price: int | None  # the uniform (or indicative) price; None without trades
    binding: bool  # the network (or the feeder capacity) decided volume and price
    fills: Mapping[bytes, int]
    cut: bool  # the network cut or passed over at least one trade


class Filled(Mapping[bytes, int]):
    """Order hash -> Wh filled; 0 for an order that got nothing."""

    def __init__(self, d: dict[bytes, int]) -> None:
        self._d = d

    def __getitem__(self, key: bytes) -> int:
        return self._d.get(key, 0)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)


def network_clearing(hashes: Sequence[bytes], buys: Sequence[int], sells: Sequence[int], limits: Sequence[int],
                     qty: Sequence[int], owners: Sequence[bytes], fee: int, cap: int, grid: GridLimits,
                     interval_s: int, pricing: str) -> Walked:
    """Rules 1-4 of the module docstring. `buys`/`sells` are order indices
    in priority order; `cap` the feeder capacity in Wh (or more than all)."""
    node_of = grid.node_of
    nb, ns = len(buys), len(sells)
    s_node = [node_of.get(owners[k]) for k in sells]
    rows = _rows_that_can_bind(grid, s_node, [qty[k] for k in sells], {node_of.get(owners[k]) for k in buys},
                               interval_s)
    left = [grid.budgets[r] * interval_s for r in rows]
    watched: dict[int, list[int]] = {}

    def column(n: int) -> list[int]:
        """Node n's coefficients in the watched rows."""
        got = watched.get(n)
        if got is None:
            got = watched[n] = [a[n] for a in rows.values()]
        return got

    # Per node pair: the rows a trade uses (d > 0: bound its room) and all
    # rows it changes, with d in budget units per Wh (3600 * (A[s] - A[b])).
    pairs: dict[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...], list[tuple[int, int]]]] = {}
    # A pair found without room: the row that stopped it and its d; it stays
    # stopped while that row has less than d left (one comparison).
    blocked: dict[tuple[int, int], tuple[int, int]] = {}

    s_rest = [qty[k] for k in sells]
    # Open sellers as a linked list in priority order; ns is its head.
    nxt = list(range(1, ns + 2))
    prv = list(range(-1, ns + 1))
    nxt[ns] = 0
    b_fill = [0] * nb
    mb: list[int] = []
    ms: list[int] = []
    mq: list[int] = []
    volume = 0
    cut = False
    for bi in range(nb):
        if volume >= cap:
            break  # the feeder capacity is used up (or zero)
        bk = buys[bi]
        eff = limits[bk] - fee
        j = nxt[ns]
        if j >= ns or limits[sells[j]] > eff:
            break  # no open ask is low enough for this buyer, nor for any after it
        b_rest = qty[bk]
        bn = node_of.get(owners[bk])
        while j < ns:
            sk = sells[j]
            if limits[sk] > eff:
                break
            want = b_rest if b_rest < s_rest[j] else s_rest[j]
            if want > cap - volume:
                want = cap - volume
            sn = s_node[j]
            if bn is None or sn is None:
                cut = True
                j = nxt[j]
                continue
            q = want
            if sn != bn:
                key = (sn, bn)
                stop = blocked.get(key)
                if stop is not None and left[stop[0]] < stop[1]:
                    cut = True
                    j = nxt[j]
                    continue
                entry = pairs.get(key)
                if entry is None:
                    diff = list(map(sub, column(sn), column(bn)))
                    nz = list(zip(compress(range(len(diff)), diff), map(mul, compress(diff, diff), repeat(3600))))
                    pos = [(k, d) for k, d in nz if d > 0]
                    entry = pairs[key] = (tuple(k for k, _ in pos), tuple(d for _, d in pos), nz)
                ks, ds, nz = entry
                if ks:
                    room = min(map(floordiv, map(left.__getitem__, ks), ds))
                    if room < q:
                        cut = True
                        if room <= 0:
                            k = min(zip(map(floordiv, map(left.__getitem__, ks), ds), ks))[1]
                            blocked[key] = (k, ds[ks.index(k)])
                            j = nxt[j]
                            continue
                        q = room
                for k, d in nz:
                    left[k] -= q * d
            mb.append(bk)
            ms.append(sk)
            mq.append(q)
            volume += q
            b_rest -= q
            s_rest[j] -= q
            if s_rest[j] == 0:  # unlink the filled seller; nxt[j] stays valid for this scan
                p, n = prv[j], nxt[j]
                nxt[p if p >= 0 else ns] = n
                if n < ns:
                    prv[n] = p
            if b_rest == 0 or volume == cap:
                break
            j = nxt[j]
        b_fill[bi] = qty[bk] - b_rest

    fills = {hashes[buys[bi]]: f for bi, f in enumerate(b_fill) if f}
    fills.update((hashes[sells[j]], qty[sells[j]] - r) for j, r in enumerate(s_rest) if r != qty[sells[j]])
    price: int | None = None
    binding = False
    prices: list[int] = []
    if mq:
        rej_bid = next((limits[buys[bi]] - fee for bi in range(nb) if b_fill[bi] < qty[buys[bi]]), None)
        rej_ask = limits[sells[nxt[ns]]] if nxt[ns] < ns else None
        acc_ask = max(map(limits.__getitem__, ms))
        acc_bid = min(map(limits.__getitem__, mb)) - fee
        pair_mid = [(limits[b] - fee + limits[s]) // 2 for b, s in zip(mb, ms)]
        if not cut:
            # Rule 3: clearing rule 5 unchanged.
            binding = volume == cap and rej_bid is not None and rej_ask is not None and rej_bid >= rej_ask
            lo = acc_ask if rej_bid is None or rej_bid < acc_ask else rej_bid
            hi = acc_bid if binding or rej_ask is None or rej_ask > acc_bid else rej_ask
            price = (lo + hi) // 2
            prices = pair_mid if pricing == PAY_AS_BID else [price] * len(mq)
        else:
            binding = True
            hi = acc_bid
            lo = rej_bid if rej_bid is not None and acc_ask < rej_bid <= hi else acc_ask
            if lo <= hi:
                price = (lo + hi) // 2
                prices = pair_mid if pricing == PAY_AS_BID else [price] * len(mq)
            else:
                prices = pair_mid
                price = sum(map(int.__mul__, mq, prices)) // volume
    return Walked(mb, ms, mq, prices, volume, price, binding, Filled(fills), cut)


def _rows_that_can_bind(grid: GridLimits, s_node: Sequence[int | None], s_qty: Sequence[int],
                        b_nodes: set[int | None], interval_s: int) -> dict[int, tuple[int, ...]]:
    """The rows (index -> A[k][.]) that some set of this book's trades
    could break; the walk watches only these, with the same result (a row
    left out never limits a trade: no trades of the book can use more than
    its budget). The most any trades can use of row k is at most, over
    the sellers' nodes, their quantity times (A[k][s] - the least A[k][b]
    of the buyers' nodes), where positive."""
    sell_q: dict[int, int] = {}
    for n, q in zip(s_node, s_qty):
        if n is not None:
            sell_q[n] = sell_q.get(n, 0) + q
    buyers = [n for n in b_nodes if n is not None]
    out: dict[int, tuple[int, ...]] = {}
    if not sell_q or not buyers:
        return out
    for k, a in enumerate(grid.rows):
        least = min(map(a.__getitem__, buyers))
        most = sum(q * (a[n] - least) for n, q in sell_q.items() if a[n] > least)
        if most * 3600 > grid.budgets[k] * interval_s:
            out[k] = a
    return out

