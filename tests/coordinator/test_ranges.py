"""Values outside their documented ranges (shared/READING_FORMAT.md,
"Ranges") inside a valid signature: 4.00 with a reason, nothing stored,
and the meter's next honest reading still goes in. Before the check,
import >= 2^63 and bytes values gave 5.00 (the meter retried for ever),
NaN time a misleading 4.09, inf/NaN were stored and served as invalid JSON,
and seq 2^63-1 made every later reading stale."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from microgrid.coordinator.ingest import ranges
from microgrid.coordinator.ingest.readings import ReadingIngest
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore
from microgrid.shared import cbor, reading, secp256k1, senml

SECRET = bytes(range(1, 33))
PUB = secp256k1.public_key(SECRET)
DEVICE = reading.device_id(PUB)
T0 = 1_700_000_000


def signed(seq: object, t: object = T0, imp: object = 100, exp: object = 0, power: object = 500,
           volt: object = 230.0, extra: list[dict[int, object]] | None = None) -> bytes:
    """A validly signed reading built by hand, so any value can be put in."""
    pack: list[dict[int, object]] = [
        {senml.BN: DEVICE + ":", senml.BT: t, senml.N: "seq", senml.V: seq},
        {senml.N: "import", senml.U: "Wh", senml.V: imp},
        {senml.N: "export", senml.U: "Wh", senml.V: exp},
        {senml.N: "power", senml.U: "W", senml.V: power},
        {senml.N: "voltage", senml.U: "V", senml.V: volt},
    ] + (extra or [])
    return reading.sign_payload(SECRET, PUB, cbor.dumps(pack))


@pytest.fixture
def ingest(tmp_path: Path) -> ReadingIngest:
    store = ReadingStore(open_database(tmp_path / "r.db"))
    store.register_device(PUB)
    return ReadingIngest(store, clock=lambda: T0 + 1000)


BAD = [
    ("import 2^63", dict(imp=1 << 63), "import="),
    ("import 2^53", dict(imp=1 << 53), "import="),
    ("export huge", dict(exp=(1 << 64) - 1), "export="),
    ("import bytes", dict(imp=b"\x01"), "must be a number"),
    ("time NaN", dict(t=math.nan), "time"),
    ("time inf", dict(t=math.inf), "time"),
    ("time 2^32", dict(t=1 << 32), "time"),
    ("power inf", dict(power=math.inf), "power must be finite"),
    ("power NaN", dict(power=math.nan), "power must be finite"),
    ("power -inf", dict(power=-math.inf), "power must be finite"),
    ("power 1e12", dict(power=1e12), "power="),
    ("voltage NaN", dict(volt=math.nan), "voltage must be finite"),
    ("voltage negative", dict(volt=-1.0), "voltage="),
    ("seq 2^63-1", dict(seq=(1 << 63) - 1), "seq="),
    ("seq 2^53", dict(seq=1 << 53), "seq="),
    ("extra bytes", dict(extra=[{senml.N: "current", senml.VD: b"\x00" * 8}]), "current"),
    ("extra NaN", dict(extra=[{senml.N: "frequency", senml.U: "Hz", senml.V: math.nan}]), "frequency"),
    ("extra inf", dict(extra=[{senml.N: "current", senml.U: "A", senml.V: math.inf}]), "current"),
    ("extra huge int", dict(extra=[{senml.N: "merged_from", senml.V: (1 << 64) - 1}]), "merged_from"),
    ("extra long text", dict(extra=[{senml.N: "reset", senml.VS: "x" * 65}]), "reset"),
]


@pytest.mark.parametrize("name,kw,why", BAD, ids=[b[0] for b in BAD])
def test_a_value_out_of_range_gets_4_00_with_a_reason_and_is_not_stored(
        ingest: ReadingIngest, name: str, kw: dict[str, object], why: str) -> None:
    seq = kw.pop("seq", 5)
    try:
        message = signed(seq, **kw)  # type: ignore[arg-type]
    except (ValueError, TypeError, OverflowError) as e:  # our CBOR cannot even encode it
        pytest.skip(f"not encodable: {e}")
    out = ingest.accept(message)
    assert out.code == "4.00", (name, out)
    assert why in out.diagnostic, out.diagnostic
    assert ingest.store.count() == 0
    # The meter's next honest reading goes in: nothing is blocked behind it.
    assert ingest.accept(signed(6)).code == "2.01"
    row = ingest.store.last_reading(DEVICE)
    assert row is not None and row["seq"] == 6
    json.dumps(row, default=str, allow_nan=False)  # what the API serves is valid JSON


def test_the_edges_of_each_range_are_accepted(ingest: ReadingIngest) -> None:
    extra = [{senml.N: "flags", senml.V: 15}, {senml.N: "reset", senml.VS: "counter_dropped"},
             {senml.N: "ok", senml.VB: True}]
    out = ingest.accept(signed(ranges.MAX_SEQ, t=T0, imp=ranges.MAX_WH, exp=0,
                               power=-ranges.MAX_ABS_POWER_W, volt=0, extra=extra))
    assert out.code == "2.01", out
    assert ingest.store.last_reading(DEVICE)["import_wh"] == ranges.MAX_WH  # type: ignore[index]
    parsed = reading.parse(signed(1, t=ranges.MAX_TIME))
    assert ranges.problem(parsed) is None


def test_the_firmware_cannot_produce_a_value_the_ranges_refuse() -> None:
    """What shared/reading.py builds for an ordinary reading (the meter's
    path) passes: the ranges refuse nothing a working meter sends."""
    r = reading.parse(reading.build(SECRET, PUB, 123456, T0, 10**9, 10**6, -4321.5, 241.7,
                                    [("current", "A", 12.5), ("flags", "", 8), ("reset", "", "energy_reset"),
                                     ("reset_import_wh", "Wh", 99), ("merged_from", "", 120000)]))
    assert ranges.problem(r) is None
