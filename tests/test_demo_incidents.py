"""microgrid/demo/incidents.py: the seed scripts what goes wrong, inside
the run, on reading times: every coordinator restarts once, each at its
own time, and several meters lose power."""

from __future__ import annotations

from microgrid.demo.incidents import DAY, plan_incidents, power_cuts_for

START = 1_782_000_000
COORDINATORS = ["alder", "birch", "cedar"]


def test_the_same_seed_plans_the_same_incidents_and_another_seed_others() -> None:
    a = plan_incidents(1, START, 30, COORDINATORS, ["alder-m1", "birch-m1"], 300)
    assert a == plan_incidents(1, START, 30, COORDINATORS, ["alder-m1", "birch-m1"], 300)
    assert a != plan_incidents(2, START, 30, COORDINATORS, ["alder-m1", "birch-m1"], 300)


def test_every_coordinator_restarts_once_at_its_own_time_inside_the_run() -> None:
    meters = [f"{c}-m{i}" for c in COORDINATORS for i in (1, 2, 3, 4)]
    orders = set()
    for seed in range(50):
        for days, step in ((30, 300), (2, 60), (0.03, 60)):
            plan = plan_incidents(seed, START, days, COORDINATORS, meters, step)
            restarts = [i for i in plan if i.kind == "restart"]
            cuts = [i for i in plan if i.kind == "power cut"]
            assert sorted(i.target for i in restarts) == COORDINATORS
            times = [i.at for i in restarts]
            # Distinct and at least two readings apart: each is checked a reading later.
            assert all(b - a >= 2 * step for a, b in zip(sorted(times), sorted(times)[1:])), times
            orders.add(tuple(i.target for i in restarts))
            # Several meters, each cut once.
            assert len(cuts) == power_cuts_for(12) == 3 and len({i.target for i in cuts}) == 3
            for i in plan:
                assert START < i.at and i.at + i.outage_s < START + days * DAY
                assert i.at % step == 0 and i.outage_s % step == 0
            for i in cuts:
                assert i.outage_s >= 5 * step and "lost power" in i.describe()
    # The seed picks who restarts first: the bootstrap node is not always last or first.
    assert len(orders) > 3


def test_two_meters_lose_power_in_a_small_street_and_one_when_there_is_one() -> None:
    assert [power_cuts_for(n) for n in (1, 2, 3, 8, 12, 40)] == [1, 2, 2, 2, 3, 10]
    plan = plan_incidents(3, START, 1, ["alder"], ["alder-m1"], 60)
    assert sorted(i.kind for i in plan) == ["power cut", "restart"]


def test_a_single_coordinator_without_meters_still_gets_its_restart() -> None:
    [only] = plan_incidents(3, START, 1, ["alder"], [], 60)
    assert only.kind == "restart" and only.target == "alder"


def test_many_coordinators_in_a_very_short_run_still_restart_at_distinct_readings() -> None:
    names = [f"c{i}" for i in range(8)]
    plan = plan_incidents(5, START, 0.01, names, [], 60)
    times = sorted(i.at for i in plan)
    assert len(plan) == 8 and all(b - a >= 120 for a, b in zip(times, times[1:]))
