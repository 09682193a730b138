"""Network-aware clearing on a small feeder: the power flow judges it.

The feeder: the upstream grid, a 250 kVA transformer and four buses 200 m
apart on NAYY 4x50 cable; households 0-3 on lv1..lv4, the utility (key 4)
upstream buying exports at 40 sat/kWh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

from microgrid.coordinator.grid.check import GridCheck, GridCheckError
from microgrid.coordinator.grid.limits import GridLimits
from microgrid.coordinator.grid.model import GridModelError, radial_feeder
from microgrid.coordinator.grid.sensitivity import LimitSettings, SensitivityError, compute_limits, limits_for
from microgrid.coordinator.market.clearing import ClearedInterval, ClearingError, ZoneRules, clear_interval
from tests.market.helpers import KEYS, START, order

PK = [k.public_key.to_bytes() for k in KEYS]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def feeder():  # type: ignore[no-untyped-def]
    model = radial_feeder(4, length_km=0.2, households=PK[:4], utility=[PK[4]])
    return model, compute_limits(model), GridCheck(model)


def sunny_book() -> list:  # type: ignore[type-arg]
    """Noon: the far end (lv4, lv3) exports 100 kW between them, lv1 buys a little."""
    return [order("sell", 15000, 30, who=3), order("sell", 10000, 35, who=2), order("buy", 2000, 150, who=0),
            order("buy", 100_000, 40, who=4)]


def metered(c: ClearedInterval) -> dict[bytes, int]:
    """Sellers export what they sold, buyers import what they bought."""
    out: dict[bytes, int] = {}
    for t in c.trades:
        out[t.seller] = out.get(t.seller, 0) + t.wh
        out[t.buyer] = out.get(t.buyer, 0) - t.wh
    return out


def test_unconstrained_clearing_breaks_the_voltage_limit_the_network_aware_one_does_not(feeder) -> None:  # type: ignore[no-untyped-def]
    model, limits, check = feeder
    free = clear_interval(sunny_book(), "zone-a", START, 900, ZoneRules())
    held = clear_interval(sunny_book(), "zone-a", START, 900, ZoneRules(network=limits))
    before, after = check.run(START, 900, metered(free)), check.run(START, 900, metered(held))
    assert free.volume_wh == 25_000 and not free.binding
    assert before.voltage_violations >= 3 and before.max_vm_pu > 1.2  # lv2..lv4 above 1.10 pu
    assert after.converged and not after.violated and after.max_vm_pu <= 1.10
    assert held.binding and 5_000 < held.volume_wh < free.volume_wh
    # The buyer on the feeder is served in full; the far-end exports are cut.
    assert held.fills[sunny_book()[2].hash] == 2000
    # Priority decides who gets the capacity: the cheaper far-end seller first.
    assert held.fills[sunny_book()[0].hash] > held.fills[sunny_book()[1].hash]
    # The linear limits hold exactly, as integers.
    nodes = {}
    for key, wh in metered(held).items():
        n = limits.node_of[key]
        nodes[n] = nodes.get(n, 0) + wh
    assert min(limits.use(nodes, 900)) >= 0
    # Prices respect every limit: uniform 40 (the utility's bid is both the
    # lowest accepted bid and the highest rejected one).
    assert held.price_sat_per_kwh == 40 and all(t.price_sat_per_kwh == 40 for t in held.trades)
    assert held.encoded != free.encoded and cbor2.loads(held.encoded)[11] == limits.digest


def test_a_network_that_cuts_nothing_changes_nothing_but_the_digest(feeder) -> None:  # type: ignore[no-untyped-def]
    _, limits, _ = feeder
    book = [order("sell", 800, 60, who=1), order("sell", 1000, 120, who=2), order("buy", 1000, 150, who=0),
            order("buy", 500, 100, who=3), order("sell", 300, 90, who=3, nonce=1)]
    for rules in (ZoneRules(), ZoneRules(capacity_wh=1200), ZoneRules(pricing="pay-as-bid", grid_fee_sat_per_kwh=5)):
        plain = clear_interval(book, "zone-a", START, 900, rules)
        net = clear_interval(book, "zone-a", START, 900, ZoneRules(rules.capacity_wh, rules.grid_fee_sat_per_kwh,
                                                                   rules.pricing, network=limits))
        assert (net.trades, net.price_sat_per_kwh, net.volume_wh, net.binding, net.pairs) == \
            (plain.trades, plain.price_sat_per_kwh, plain.volume_wh, plain.binding, plain.pairs)
        assert dict(net.fills) == {h: plain.fills[h] for h in plain.order_hashes if plain.fills[h]}
        body = cbor2.loads(net.encoded)
        assert body.pop(11) == limits.digest
        assert cbor2.dumps(body, canonical=True) == plain.encoded


def test_owners_the_model_does_not_place_cannot_trade(feeder) -> None:  # type: ignore[no-untyped-def]
    _, limits, _ = feeder
    book = [order("sell", 1000, 30, who=7), order("buy", 1000, 150, who=8), order("sell", 500, 50, who=1),
            order("buy", 400, 100, who=0)]
    c = clear_interval(book, "zone-a", START, 900, ZoneRules(network=limits))
    assert {t.seller for t in c.trades} == {PK[1]} and {t.buyer for t in c.trades} == {PK[0]}
    assert c.volume_wh == 400 and c.binding
    with pytest.raises(ClearingError, match="expected GridLimits"):
        ZoneRules(network="limits")  # type: ignore[arg-type]


def test_limits_follow_the_network_and_the_members(feeder) -> None:  # type: ignore[no-untyped-def]
    model, limits, _ = feeder
    again = limits_for(model)
    assert again == limits and again.digest == limits.digest
    assert GridLimits.decode(limits.encode()) == limits
    longer = radial_feeder(4, length_km=0.3, households=PK[:4], utility=[PK[4]])
    assert longer.fingerprint() != model.fingerprint()
    moved = model.with_members({PK[0]: "lv4", PK[3]: "lv1", PK[4]: "grid"})
    assert moved.fingerprint() != model.fingerprint()
    far = limits_for(longer)
    # Longer cable: the far end's voltage rises faster per watt.
    row = far.names.index("vmax:lv4")
    assert far.columns[4][row] > limits.columns[4][limits.names.index("vmax:lv4")] > 0
    assert limits_for(moved).node_of[PK[0]] == limits_for(moved).nodes.index("lv4")


def test_bad_models_settings_and_meter_values_are_refused(feeder) -> None:  # type: ignore[no-untyped-def]
    model, limits, check = feeder
    with pytest.raises(GridModelError, match="'lv9' is not a bus"):
        model.with_members({PK[0]: "lv9"})
    with pytest.raises(GridModelError, match="5 households for 4 buses"):
        radial_feeder(4, households=PK[:5])
    with pytest.raises(SensitivityError, match="vmin_pu"):
        LimitSettings(vmin_pu=1.2)
    with pytest.raises(GridCheckError, match="no connection point"):
        check.run(START, 900, {PK[9]: 10})
    with pytest.raises(GridCheckError, match="not an integer"):
        check.run(START, 900, {PK[0]: 1.5})
    with pytest.raises(ValueError, match="not an encoded GridLimits|not canonical"):
        GridLimits.decode(b"\x80")
    forged = cbor2.loads(limits.encode())
    forged[5][1][0] = "x"
    with pytest.raises(ValueError):
        GridLimits.decode(cbor2.dumps(forged, canonical=True))


SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from microgrid.coordinator.grid.model import radial_feeder
from microgrid.coordinator.grid.sensitivity import compute_limits
from microgrid.coordinator.market.clearing import ZoneRules, clear_interval
from tests.market.helpers import KEYS, START, order
from tests.grid.test_network_clearing import sunny_book
pk = [k.public_key.to_bytes() for k in KEYS]
limits = compute_limits(radial_feeder(4, length_km=0.2, households=pk[:4], utility=[pk[4]]))
print(limits.digest.hex(), clear_interval(sunny_book(), "zone-a", START, 900, ZoneRules(network=limits)).hash_hex)
"""


def test_same_book_and_model_same_hash_in_another_process_and_hash_seed(feeder) -> None:  # type: ignore[no-untyped-def]
    _, limits, _ = feeder
    ours = clear_interval(sunny_book(), "zone-a", START, 900, ZoneRules(network=limits))
    assert clear_interval(list(reversed(sunny_book())), "zone-a", START, 900, ZoneRules(network=limits)).hash == ours.hash
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], capture_output=True, text=True, env=env,
                         timeout=100, check=True).stdout.split()
    assert out == [limits.digest.hex(), ours.hash_hex]


def test_the_report_counts_what_broke_and_a_power_flow_that_fails(feeder) -> None:  # type: ignore[no-untyped-def]
    from microgrid.coordinator.grid.check import GridReport

    _, _, check = feeder
    report = GridReport()
    report.add(check.run(START, 900, {PK[0]: -500, PK[3]: 400}))  # a quiet interval
    report.add(check.run(START + 900, 900, metered(clear_interval(sunny_book(), "zone-a", START, 900))))
    report.add(check.run(START + 1800, 900, {PK[3]: 10_000_000}))  # 40 MW at the far end: no solution
    quiet, sunny, absurd = report.checks
    assert not quiet.violated and quiet.export_wh == 400 and quiet.import_wh == 500
    assert sunny.violated and not absurd.converged and absurd.violated
    s = report.to_dict()["summary"]
    assert s["intervals"] == 3 and s["not_converged"] == 1 and s["intervals_with_voltage_violations"] == 1
    assert s["max_vm_pu"] == sunny.max_vm_pu and len(report.to_dict()["intervals"]) == 3
    assert absurd.max_vm_pu is None and "NaN" not in json.dumps(report.to_dict())
