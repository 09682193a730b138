"""The decision journal: what is kept, pruning, and a database it cannot use."""

from __future__ import annotations

from pathlib import Path

import pytest

from microgrid.coordinator.planner.journal import Entry, Journal, JournalError


def entry(t: int, **kw: object) -> Entry:
    args: dict[str, object] = dict(decided_at=t, slot_start=t + 60, order_start=t + 3660, status="optimal",
                                   reason="", inputs_digest="ab" * 32, objective_sat=12.5, battery_w=-1500.0,
                                   ev_w=None, orders=[{"side": "buy", "quantity_wh": 10, "limit_sat_per_kwh": 100}],
                                   why={"soc_wh": 1000}, schedule={"soc_wh": [1.0] * 96})
    args.update(kw)
    return Entry(**args)  # type: ignore[arg-type]


def test_decisions_come_back_newest_first_with_their_schedule_and_survive_reopening(tmp_path: Path) -> None:
    j = Journal(tmp_path / "p.db")
    for t in (1000, 2000, 3000):
        j.record(entry(t))
    j.close()
    j = Journal(tmp_path / "p.db")
    got = j.recent(2, with_schedule=True)
    assert [e.decided_at for e in got] == [3000, 2000]
    assert got[0] == entry(3000)
    assert j.recent(1)[0].schedule is None  # not unpacked unless asked
    assert j.prune(2500) == 2 and j.count() == 1


def test_a_journal_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "p.db"
    bad.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(JournalError, match=r"cannot open the planner's journal .*p.db"):
        Journal(bad)
    with pytest.raises(JournalError, match="cannot open the planner's journal"):
        Journal(tmp_path)  # a directory
