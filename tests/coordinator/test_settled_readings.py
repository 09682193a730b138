"""Settlement on what was known at the gate: a reading dated back (to t = 0,
ten years ago, into an interval already settled, or by a meter clock that
stepped back) is stored as evidence, never changes a settled interval, and
its energy is counted once, in the first interval still open."""

from __future__ import annotations

from pathlib import Path

import pytest

from microgrid.coordinator.ingest.readings import ReadingIngest
from microgrid.coordinator.store.database import open_database
from microgrid.coordinator.store.readings import HELD_BACK, HELD_CLOSED, ReadingStore, count_time
from microgrid.coordinator.trading.metering import interval_energy
from microgrid.shared import reading, secp256k1

SECRET = bytes(range(1, 33))
PUB = secp256k1.public_key(SECRET)
DEV = reading.device_id(PUB)
T0 = 1_700_000_100 - 1_700_000_100 % 900  # an interval start
STEP = 900
TEN_YEARS_S = 10 * 365 * 86400


class Site:
    """One meter's readings through the real ingest path, on a clock the
    test sets."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = ReadingStore(open_database(path))
        self.store.register_device(PUB, "m1")
        self.now = float(T0)
        self.ingest = ReadingIngest(self.store, clock=lambda: self.now)

    def send(self, seq: int, t: int, import_wh: int, extra: list | None = None) -> bytes:
        m = reading.build(SECRET, PUB, seq, t, import_wh, 0, 500, 230.0, extra or [])
        self.now = max(self.now, t + 1.0)  # sent when taken, or later
        out = self.ingest.accept(m)
        assert out.ok, out.diagnostic
        return m

    def energy(self, start: int) -> int:
        return interval_energy(self.store, [DEV], start, start + STEP).import_wh

    def settle(self, start: int) -> int:
        """What publishing the interval's metering does: compute, close."""
        wh = self.energy(start)
        self.store.close_metering(start + STEP)
        return wh


def settled_first_interval(tmp_path: Path) -> tuple[Site, int]:
    """Readings across the first interval (0 -> 50 Wh), settled at 50 Wh."""
    site = Site(tmp_path / "r.db")
    site.send(1, T0, 0)
    site.send(2, T0 + 600, 50)
    site.now = T0 + STEP + 120
    assert site.settle(T0) == 50
    return site, 50


@pytest.mark.parametrize("dated", [0, T0 - TEN_YEARS_S], ids=["t=0", "ten-years-back"])
def test_a_back_dated_reading_never_changes_a_settled_interval_and_counts_once(tmp_path: Path, dated: int) -> None:
    site, settled = settled_first_interval(tmp_path)
    msg = site.send(3, dated, 5000)
    site.send(4, T0 + STEP + 300, 5010)
    # Before the rule: 5,000 Wh in the settled interval, then 4,960 again.
    assert site.energy(T0) == settled
    assert site.energy(T0 + STEP) == 4960
    assert site.energy(T0) + site.energy(T0 + STEP) == 5010  # the counter's whole increase, once
    row = [r for r in site.store.readings(DEV) if r["seq"] == 3][0]
    assert row["cose"] == msg and row["time"] == dated and row["import_wh"] == 5000  # evidence, as sent
    assert row["held"] == HELD_BACK and row["counted_at"] > T0 + 600
    assert site.ingest.counts["held"] == 1 and DEV in site.ingest.clock_flagged
    assert site.store.time_anomalies(DEV)["stepped_back"] == 1


def test_a_reading_after_the_last_but_into_a_settled_interval_counts_in_the_next(tmp_path: Path) -> None:
    site, settled = settled_first_interval(tmp_path)
    # Dated after the last reading, but the interval it falls in is settled
    # (a buffered reading delivered late, or one forged to move energy back).
    site.send(3, T0 + 800, 400)
    assert site.energy(T0) == settled
    assert site.energy(T0 + STEP) == 350
    row = site.store.last_reading(DEV)
    assert row is not None and row["held"] == HELD_CLOSED and row["time"] == T0 + 800
    assert row["counted_at"] == pytest.approx(T0 + STEP + 0.001)
    assert site.store.time_anomalies(DEV) == {"stepped_back": 0, "into_settled": 1, "flagged_stepped": 0}
    # A reading dated exactly at the settled interval's end also counts after it.
    site.send(4, T0 + STEP, 420)
    assert site.energy(T0) == settled and site.energy(T0 + STEP) == 370


def test_a_meter_clock_stepping_back_is_flagged_and_counted_once(tmp_path: Path) -> None:
    site = Site(tmp_path / "r.db")
    site.send(1, T0, 0)
    site.send(2, T0 + 400, 40)
    site.send(3, T0 + 800, 80)
    site.now = T0 + STEP + 120
    assert site.settle(T0) == 80
    site.send(4, T0 + STEP + 300, 110)
    # The clock steps back 20 minutes: its readings are dated into the
    # settled interval and before the last one, one batch after another.
    site.send(5, T0 + STEP + 300 - 1200, 130)
    site.send(6, T0 + STEP + 360 - 1200, 150)
    assert site.energy(T0) == 80
    assert site.energy(T0 + STEP) == 70
    assert site.store.time_anomalies(DEV)["stepped_back"] == 2
    assert site.ingest.clock_flagged == {DEV}
    # Per device, counted_at strictly increases with seq.
    counted = [r["counted_at"] for r in site.store.readings(DEV)]
    assert counted == sorted(counted) and len(set(counted)) == len(counted)


def test_a_meter_that_flags_its_own_time_step_is_flagged_and_counted_as_dated(tmp_path: Path) -> None:
    site = Site(tmp_path / "r.db")
    site.send(1, T0, 0)
    # The firmware holds its time at the previous + 1 s and sets flags bit 3.
    site.send(2, T0 + 1, 5, [("flags", None, 8)])
    site.send(3, T0 + 300, 30, [("flags", None, "not a number")])  # a bad flags record is just not a flag
    assert site.store.time_anomalies(DEV) == {"stepped_back": 0, "into_settled": 0, "flagged_stepped": 1}
    assert site.ingest.clock_flagged == {DEV} and site.ingest.counts["held"] == 0
    assert site.energy(T0) == 30


def test_a_batch_whose_times_run_backwards_counts_each_reading_once(tmp_path: Path) -> None:
    site, settled = settled_first_interval(tmp_path)
    m = reading.build_batch(SECRET, PUB, [
        (3, T0 + STEP + 100, 70, 0, 500, 230.0, []),
        (4, T0 + 10, 90, 0, 500, 230.0, []),  # back into the settled interval
        (5, T0 + STEP + 200, 100, 0, 500, 230.0, []),
    ])
    site.now = T0 + STEP + 201
    assert site.ingest.accept(m).ok
    assert site.energy(T0) == settled and site.energy(T0 + STEP) == 50
    assert site.ingest.counts["held"] == 1


def test_duplicates_and_replays_are_stored_once_and_change_nothing(tmp_path: Path) -> None:
    site, settled = settled_first_interval(tmp_path)
    late = site.send(3, T0 + 700, 90)  # into the settled interval: held
    site.send(4, T0 + STEP + 300, 100)
    before = (site.energy(T0), site.energy(T0 + STEP))
    again = site.ingest.accept(late)  # the same bytes: a retransmission
    assert again.code == "4.09" and again.diagnostic.startswith("duplicate")
    replay = site.ingest.accept(reading.build(SECRET, PUB, 2, T0 + 600, 50, 0, 500, 230.0, []))
    assert replay.code == "4.09" and not replay.stored  # an old seq: refused, whatever its time
    other = site.ingest.accept(reading.build(SECRET, PUB, 3, T0 + 650, 9999, 0, 500, 230.0, []))
    assert other.code == "4.09" and other.diagnostic.startswith("stale")
    assert site.store.count(DEV) == 4
    assert (site.energy(T0), site.energy(T0 + STEP)) == before == (settled, 50)


def test_the_settled_boundary_survives_a_restart_and_never_moves_back(tmp_path: Path) -> None:
    site, settled = settled_first_interval(tmp_path)
    site.store.close_metering(T0)  # an older interval closed late: no effect
    reopened = ReadingStore(open_database(site.path))
    assert reopened.closed_until() == T0 + STEP
    site.store = reopened
    site.ingest = ReadingIngest(reopened, clock=lambda: site.now)
    site.send(3, T0 + 850, 60)
    assert site.energy(T0) == settled and site.energy(T0 + STEP) == 10


def test_count_time_rule() -> None:
    assert count_time(100.0, None, None) == (100.0, None)
    assert count_time(100.0, 50.0, 90.0) == (100.0, None)
    assert count_time(50.0, 50.0, None) == (50.001, HELD_BACK)
    assert count_time(95.0, 90.0, 100.0) == (100.001, HELD_CLOSED)
    assert count_time(80.0, 90.0, 100.0) == (100.001, HELD_BACK)
