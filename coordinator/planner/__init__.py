"""The household's scheduler: forecasts (PV, load, prices) -> a day-ahead
linear program -> battery and EV setpoints and the next interval's orders.
docs/PLANNER.md explains it for people.

- model.py      the values planned with (battery, EV, inputs, plan); no I/O
- pv.py         PV forecast: pvlib clear sky for the configured array
- load.py       load forecast from the household's stored readings
- prices.py     tariff, expected market prices and the household's rules -> price per slot
- lp.py         the linear program (HiGHS)
- baseline.py   the rule-based schedule the LP is measured against
- orders.py     the plan's next interval -> orders within the household's rules
- journal.py    every decision and why, in SQLite (its own file)
- scheduler.py  the conductor: one decision per interval, time passed in
- settings.py   the [planner] section
"""
