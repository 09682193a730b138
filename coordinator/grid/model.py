"""The zone's network model: feeder lines, transformer, and where each
member is connected, in pandapower.

A member's place comes from its membership record, which binds the
coordinator key to a connection point and a feeder (coordinator/membership
records.py, roster.Member): the connection point names a bus of the model
(the bus's name in pandapower). The utility (the energy company buying
exports and selling imports) is connected at GRID, the transformer's
upstream side. The demo and the bench use one of pandapower's built-in
low-voltage benchmark networks with the households placed on its load
buses (`benchmark`); tests use a small radial feeder (`radial_feeder`).

pandapower takes seconds to import: it is imported inside the functions
that need it, so a coordinator without a network model never pays for it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .limits import GRID

# Built-in networks by our name -> pandapower.networks function.
BENCHMARKS = {
    "kerber_landnetz_freileitung_1": "create_kerber_landnetz_freileitung_1",
    "kerber_landnetz_freileitung_2": "create_kerber_landnetz_freileitung_2",
    "kerber_landnetz_kabel_1": "create_kerber_landnetz_kabel_1",
    "kerber_landnetz_kabel_2": "create_kerber_landnetz_kabel_2",
    "kerber_dorfnetz": "create_kerber_dorfnetz",
    "kerber_vorstadtnetz_kabel_1": "create_kerber_vorstadtnetz_kabel_1",
    "cigre_lv": "create_cigre_network_lv",
}


class GridModelError(ValueError):
    """A network model or a member's place in it is wrong."""


def pandapower() -> Any:
    """pandapower, imported on first use (4-5 s), its numba advice silenced:
    our networks are small enough without the JIT."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pandapower as pp
        import pandapower.networks  # noqa: F401 - the benchmarks
    return pp


def run_power_flow(net: Any) -> None:
    """pandapower's Newton-Raphson power flow, quietly (numba off), from the
    flat start and to machine precision: the result must not depend on the
    previous run (pandapower's default warm-starts from it), so that two
    coordinators computing the same model get the same numbers."""
    pp = pandapower()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(net, numba=False, init="dc", tolerance_mva=1e-12, max_iteration=30)


@dataclass
class GridModel:
    """A pandapower net (households' own loads and generators are added by
    the check, not kept here), the connection points (name -> bus index),
    and each member's connection point (owner key -> name or GRID)."""

    net: Any
    points: dict[str, int]
    members: dict[bytes, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, point in self.members.items():
            if point != GRID and point not in self.points:
                raise GridModelError(f"member {key.hex()[:16]}: connection point {point!r} is not a bus of the"
                                     f" network (known: {', '.join(sorted(self.points)[:8])}...)")

    @property
    def nodes(self) -> list[str]:
        """The nodes the limits have columns for: GRID first, then every
        connection point a member uses, sorted."""
        return [GRID] + sorted({p for p in self.members.values() if p != GRID})

    def bus(self, point: str) -> int | None:
        """The bus of a connection point; None for GRID (upstream of the
        transformer: the power flow's slack)."""
        return None if point == GRID else self.points[point]

    def fingerprint(self) -> bytes:
        """A hash of what the limits depend on: buses, lines, transformers,
        switches, the upstream grid, and the members' places. Limits are
        recomputed when it changes (sensitivity.limits_for)."""
        net = self.net
        tables = {
            "bus": net.bus[["vn_kv", "in_service"]],
            "line": net.line[["from_bus", "to_bus", "length_km", "r_ohm_per_km", "x_ohm_per_km", "c_nf_per_km",
                              "max_i_ka", "df", "parallel", "in_service"]],
            "trafo": net.trafo[["hv_bus", "lv_bus", "sn_mva", "vn_hv_kv", "vn_lv_kv", "vk_percent", "vkr_percent",
                                "pfe_kw", "i0_percent", "shift_degree", "tap_pos", "in_service"]],
            "switch": net.switch[["bus", "element", "et", "closed"]],
            "ext_grid": net.ext_grid[["bus", "vm_pu", "va_degree", "in_service"]],
        }
        doc = {name: [[_plain(v) for v in row] for row in t.itertuples(name=None)] for name, t in tables.items()}
        doc["points"] = sorted([p, int(b)] for p, b in self.points.items())
        doc["members"] = sorted([k.hex(), p] for k, p in self.members.items())
        return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).digest()

    def with_members(self, members: Mapping[bytes, str]) -> "GridModel":
        return GridModel(self.net, dict(self.points), dict(members))


def _plain(v: Any) -> Any:
    """A table cell as JSON the same on every machine (floats by repr)."""
    if hasattr(v, "item"):
        v = v.item()  # a numpy scalar -> the Python one
    if isinstance(v, float):
        return None if math.isnan(v) else repr(v)
    if v is None or isinstance(v, (bool, int, str)):
        return v
    return str(v)


def _point_names(net: Any, buses: Iterable[int]) -> dict[str, int]:
    """Connection point names for buses: the bus's own name where it is
    unique, else "bus<index>"."""
    names = net.bus["name"]
    counts = names.value_counts()
    out: dict[str, int] = {}
    for b in buses:
        name = names.at[b]
        if not isinstance(name, str) or not name or counts.get(name, 0) != 1:
            name = f"bus{b}"
        out[name] = int(b)
    return out


def _strip_injections(net: Any) -> None:
    """Remove the benchmark's own loads and generators: the households
    are placed by the check, with their metered values."""
    for table in ("load", "sgen", "storage"):
        t = getattr(net, table, None)
        if t is not None and len(t):
            net[table] = t.iloc[0:0]


def load_network(spec: str) -> Any:
    """A pandapower net: a BENCHMARKS name, or a pandapower JSON file."""
    pp = pandapower()
    if spec in BENCHMARKS:
        # Some Kerber networks draw cable types from the global `random`:
        # seed it by the name (and put its state back), so that every
        # coordinator builds the same benchmark.
        state = random.getstate()
        random.seed(spec)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return getattr(pp.networks, BENCHMARKS[spec])()
        finally:
            random.setstate(state)
    if spec.endswith(".json"):
        try:
            return pp.from_json(spec)
        except (OSError, ValueError) as e:
            raise GridModelError(f"network {spec!r}: cannot read a pandapower JSON file: {e}") from None
    raise GridModelError(f"network {spec!r}: expected one of {', '.join(BENCHMARKS)} or a pandapower .json file")


def benchmark(name: str, households: Sequence[bytes], utility: Sequence[bytes] = ()) -> GridModel:
    """A built-in benchmark network with household i on the benchmark's
    i-th load bus (in the order of its load table) and `utility` keys at
    GRID. Raises GridModelError if there are more households than load
    buses."""
    net = load_network(name)
    load_buses = list(dict.fromkeys(int(b) for b in net.load["bus"]))
    if len(households) > len(load_buses):
        raise GridModelError(f"{name}: {len(households)} households for {len(load_buses)} load buses")
    _strip_injections(net)
    points = _point_names(net, net.bus.index)
    by_bus = {b: p for p, b in points.items()}
    members = {key: by_bus[load_buses[i]] for i, key in enumerate(households)}
    members.update((key, GRID) for key in utility)
    return GridModel(net, points, members)


def from_members(net: Any, members: Iterable[Any], utility: Sequence[bytes] = ()) -> GridModel:
    """A model of `net` with each member where its membership record says:
    `members` are objects with `key` (bytes) and `connection` (a bus name),
    such as roster.Member."""
    net = copy.deepcopy(net)
    _strip_injections(net)
    points = _point_names(net, net.bus.index)
    placed = {m.key: m.connection for m in members}
    placed.update((key, GRID) for key in utility)
    return GridModel(net, points, placed)


def radial_feeder(buses: int, length_km: float = 0.1, line_type: str = "NAYY 4x50 SE",
                  trafo_type: str = "0.25 MVA 10/0.4 kV", households: Sequence[bytes] = (),
                  utility: Sequence[bytes] = ()) -> GridModel:
    """A small feeder: the upstream grid (10 kV), a transformer, its 0.4 kV
    busbar "lv0" and `buses` more buses "lv1".."lvN" in a line, each
    `length_km` from the last; household i at "lv<i+1>"."""
    if not 1 <= buses <= 200:
        raise GridModelError(f"buses={buses}: expected 1..200")
    if len(households) > buses:
        raise GridModelError(f"{len(households)} households for {buses} buses")
    pp = pandapower()
    net = pp.create_empty_network()
    mv = pp.create_bus(net, 10.0, name="mv")
    pp.create_ext_grid(net, mv, vm_pu=1.0)
    prev = pp.create_bus(net, 0.4, name="lv0")
    pp.create_transformer(net, mv, prev, std_type=trafo_type, name="trafo")
    for i in range(1, buses + 1):
        b = pp.create_bus(net, 0.4, name=f"lv{i}")
        pp.create_line(net, prev, b, length_km, line_type, name=f"line{i}")
        prev = b
    points = _point_names(net, net.bus.index)
    members = {key: f"lv{i + 1}" for i, key in enumerate(households)}
    members.update((key, GRID) for key in utility)
    return GridModel(net, points, members)
