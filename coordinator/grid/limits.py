"""The network's limits as the clearing sees them: integers only.

Pure: no pandapower, no floating point, no clock. sensitivity.py computes
a GridLimits from a network model; every coordinator of the zone must use
the same one (its `digest` is part of each cleared interval's encoding,
so a coordinator with another model or other limits gets another hash).

The model is linear. Each constraint row k (a bus voltage bound, a line's
or the transformer's flow in one direction) has an integer budget B[k],
and each node n (a connection point) a coefficient A[k][n]: what one watt
injected at n, taken out at the transformer's high-voltage side, uses of
row k. Units are parts of SCALE of the row's reference range (0.2 pu for
voltages, the rated flow for a line or transformer), so B[k] = SCALE is
"the whole range is free". A trade of q Wh over an interval of T s from a
seller at node s to a buyer at node b is an average of q * 3600 / T W
injected at s and withdrawn at b, so it uses

    q * 3600 * (A[k][s] - A[k][b])   of   B[k] * T

and the rows add up over trades. A negative use frees room (a trade
against the flow). Node GRID is the transformer's high-voltage side (the
utility's connection): all its coefficients are 0.

Why integers: clearing must be byte-identical on every machine; a float
comparison at the edge of a limit could go either way on two machines.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping

import cbor2

VERSION = 1
SCALE = 10**12  # a row's reference range, in budget units
GRID = "grid"  # the connection point name of the transformer's upstream side


class GridLimitsError(ValueError):
    """Limits that are malformed or inconsistent."""


@dataclass(frozen=True)
class GridLimits:
    """What the clearing needs of the network, as integers.

    owners: (owner public key, node) pairs, sorted: where each member's
        orders inject or withdraw. An owner not listed cannot trade while
        the network is enforced (nobody knows where its energy would go).
    nodes: the connection point name of each node (for people and reports).
    names: what each row limits, e.g. "vmax:loadbus_1_3", "line+:line_1_2".
    budgets: B[k], per row.
    columns: A[.][n] per node n: a tuple with one integer per row.
    """

    owners: tuple[tuple[bytes, int], ...]
    nodes: tuple[str, ...]
    names: tuple[str, ...]
    budgets: tuple[int, ...]
    columns: tuple[tuple[int, ...], ...]
    node_of: Mapping[bytes, int] = field(init=False, compare=False, hash=False, repr=False)
    rows: tuple[tuple[int, ...], ...] = field(init=False, compare=False, hash=False, repr=False)  # A[k][.]
    digest: bytes = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        rows = len(self.budgets)
        if len(self.names) != rows:
            raise GridLimitsError(f"{len(self.names)} row names for {rows} rows")
        if len(self.columns) != len(self.nodes):
            raise GridLimitsError(f"{len(self.columns)} columns for {len(self.nodes)} nodes")
        for n, col in enumerate(self.columns):
            if len(col) != rows or not all(type(a) is int for a in col):
                raise GridLimitsError(f"column {n} ({self.nodes[n]}): expected {rows} integers")
        if not all(type(b) is int for b in self.budgets):
            raise GridLimitsError("budgets: expected integers")
        keys = [k for k, _ in self.owners]
        if keys != sorted(set(keys)):
            raise GridLimitsError("owners: expected distinct keys, sorted")
        for key, n in self.owners:
            if not isinstance(key, bytes) or type(n) is not int or not 0 <= n < len(self.nodes):
                raise GridLimitsError(f"owner {key!r}: node {n!r} is not one of the {len(self.nodes)} nodes")
        object.__setattr__(self, "node_of", dict(self.owners))
        object.__setattr__(self, "rows", tuple(zip(*self.columns)) if self.columns else ((),) * rows)
        object.__setattr__(self, "digest", hashlib.sha256(self.encode()).digest())

    def encode(self) -> bytes:
        """Canonical CBOR: what coordinators compare (via `digest`)."""
        return cbor2.dumps([VERSION, [list(o) for o in self.owners], list(self.nodes), list(self.names),
                            list(self.budgets), [list(c) for c in self.columns]], canonical=True)

    @classmethod
    def decode(cls, data: bytes) -> "GridLimits":
        try:
            v, owners, nodes, names, budgets, columns = cbor2.loads(data)
            if v != VERSION:
                raise GridLimitsError(f"version {v!r}: expected {VERSION}")
            out = cls(tuple((bytes(k), n) for k, n in owners), tuple(nodes), tuple(names), tuple(budgets),
                      tuple(tuple(c) for c in columns))
        except GridLimitsError:
            raise
        except (ValueError, TypeError, cbor2.CBORDecodeError) as e:
            raise GridLimitsError(f"not an encoded GridLimits: {e}") from None
        if out.encode() != data:
            raise GridLimitsError("not canonical: another encoding of the same limits")
        return out

    def use(self, injected: Mapping[int, int], interval_s: int) -> list[int]:
        """Budget left per row (units * interval_s) after the net injections
        `injected` (node -> Wh over the interval; withdrawals negative).
        Negative entries are rows the injections break."""
        left = [b * interval_s for b in self.budgets]
        for n, wh in injected.items():
            col = self.columns[n]
            for k in range(len(left)):
                left[k] -= wh * 3600 * col[k]
        return left
