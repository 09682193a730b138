"""The [grid] settings, members placed from their records, benchmark
networks built the same by every coordinator."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from microgrid.coordinator.grid.model import GridModelError, benchmark, load_network, pandapower, radial_feeder
from microgrid.coordinator.grid.settings import GridSettings, GridSettingsError
from tests.market.helpers import KEYS

PK = [k.public_key.to_bytes() for k in KEYS]


@dataclass
class Member:  # the fields of roster.Member the model reads
    key: bytes
    connection: str


def test_benchmarks_are_the_same_every_time_and_leave_random_alone() -> None:
    random.seed(99)
    expected = random.random()
    random.seed(99)
    a = benchmark("kerber_dorfnetz", PK[:3], [PK[5]])
    b = benchmark("kerber_dorfnetz", PK[:3], [PK[5]])
    assert random.random() == expected  # the global generator is put back
    assert a.fingerprint() == b.fingerprint()
    assert a.members[PK[0]] == "loadbus_1_1" and a.members[PK[5]] == "grid"
    assert len(a.net.load) == 0  # the benchmark's own loads: the check places the households
    with pytest.raises(GridModelError, match="expected one of"):
        load_network("nowhere")
    with pytest.raises(GridModelError, match="9 households for 8 load buses"):
        benchmark("kerber_landnetz_kabel_1", [bytes([i]) for i in range(9)])


def test_settings_place_members_from_their_records_and_the_table(tmp_path: Path) -> None:
    path = tmp_path / "feeder.json"
    pandapower().to_json(radial_feeder(3, length_km=0.2).net, str(path))
    s = GridSettings(enabled=True, network=str(path), utility=[PK[4].hex()],
                     connections={PK[2].hex(): "lv3"}).validate()
    limits = s.limits([Member(PK[0], "lv1"), Member(PK[1], "lv2"), Member(PK[2], "lv1")])
    assert limits is not None
    where = {k: limits.nodes[n] for k, n in limits.owners}
    assert where == {PK[0]: "lv1", PK[1]: "lv2", PK[2]: "lv3", PK[4]: "grid"}  # the table overrides the record
    assert GridSettings().validate().limits([Member(PK[0], "lv1")]) is None  # disabled: not enforced
    with pytest.raises(GridModelError, match="'lv7' is not a bus"):
        s.limits([Member(PK[0], "lv7")])


@pytest.mark.parametrize("bad, message", [
    (dict(enabled="yes"), "expected true or false"),
    (dict(enabled=True), "expected a benchmark name"),
    (dict(utility=["02" + "ab" * 31]), "compressed public key"),
    (dict(utility="02ab"), "list of keys"),
    (dict(connections={"zz": "lv1"}), "compressed public key"),
    (dict(connections={PK[0].hex(): ""}), "expected a bus name"),
    (dict(vmax_pu="1.1"), "expected a number"),
    (dict(vmin_pu=1.05), "vmin_pu"),
    (dict(voltage_margin_pu=0.2), "voltage_margin_pu"),
    (dict(loading_margin_percent=150.0), "loading_margin_percent"),
])
def test_bad_settings_are_refused_with_the_setting_named(bad: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(GridSettingsError, match=message):
        GridSettings(**bad).validate()
