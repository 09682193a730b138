"""Energy per interval from stored readings, across a counter reset: the
reset record's old totals make it exact; counters never count negative."""

from __future__ import annotations

from pathlib import Path

from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import ReadingStore, counter_increase
from microgrid.coordinator.trading.metering import interval_energy
from microgrid.shared import reading, secp256k1

SECRET = bytes(range(1, 33))
PUB = secp256k1.public_key(SECRET)
T0 = 1_700_000_000


def store_with(tmp_path: Path, rows: list[tuple[int, int, int, list]]) -> tuple[ReadingStore, str]:
    store = ReadingStore(open_database(tmp_path / "m.db"))
    store.register_device(PUB)
    for seq, (dt, imp, exp, extra) in enumerate(rows, start=1):
        m = reading.build(SECRET, PUB, seq, T0 + dt, imp, exp, 0, 230.0, extra)
        store.insert(reading.parse(m), m)
    return store, reading.device_id(PUB)


def test_a_reset_in_the_middle_of_an_interval_keeps_every_wh(tmp_path: Path) -> None:
    store, dev = store_with(tmp_path, [
        (0, 100, 10, []),
        (300, 150, 10, []),
        # The meter was swapped: new counters, the old totals as evidence.
        (400, 5, 0, [("reset", None, "counter_dropped"), ("reset_import_wh", "Wh", 160), ("reset_export_wh", "Wh", 12)]),
        (900, 20, 3, []),
    ])
    e = interval_energy(store, [dev], T0, T0 + 900)
    assert (e.import_wh, e.export_wh, e.complete) == (80, 5, True)


def test_counters_running_backwards_without_a_reset_count_as_zero() -> None:
    prev = {"import_wh": 100, "export_wh": 5, "seq": 1}
    assert counter_increase(prev, {"import_wh": 90, "export_wh": 7, "seq": 2, "extra": None}) == (0, 2)


def test_an_interval_before_the_first_reading_is_marked_incomplete(tmp_path: Path) -> None:
    store, dev = store_with(tmp_path, [(600, 10, 0, []), (900, 30, 0, [])])
    e = interval_energy(store, [dev], T0, T0 + 900)
    assert (e.import_wh, e.complete) == (20, False)
