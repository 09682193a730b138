"""microgrid/demo/incidents.py: the seed scripts what goes wrong, inside
the run, on reading times, never restarting the overlay's bootstrap node
when another coordinator can be restarted."""

from __future__ import annotations

from microgrid.demo.incidents import DAY, plan_incidents

START = 1_782_000_000


def test_the_same_seed_plans_the_same_incidents_and_another_seed_others() -> None:
    a = plan_incidents(1, START, 30, ["alder", "birch", "cedar"], ["alder-m1", "birch-m1"], 300)
    assert a == plan_incidents(1, START, 30, ["alder", "birch", "cedar"], ["alder-m1", "birch-m1"], 300)
    assert a != plan_incidents(2, START, 30, ["alder", "birch", "cedar"], ["alder-m1", "birch-m1"], 300)


def test_incidents_fall_inside_the_run_on_reading_times() -> None:
    for seed in range(50):
        plan = plan_incidents(seed, START, 2, ["alder", "birch"], ["alder-m1", "birch-m1", "birch-m2"], 60)
        kinds = sorted(i.kind for i in plan)
        assert kinds == ["power cut", "restart"]
        for i in plan:
            assert START < i.at and i.at + i.outage_s < START + 2 * DAY and i.at % 60 == 0 and i.outage_s % 60 == 0
            if i.kind == "restart":
                assert i.target == "birch"  # alder bootstraps the overlay
            else:
                assert i.outage_s >= 300 and "lost power" in i.describe()


def test_a_single_coordinator_without_meters_still_gets_its_restart() -> None:
    [only] = plan_incidents(3, START, 1, ["alder"], [], 60)
    assert only.kind == "restart" and only.target == "alder"
