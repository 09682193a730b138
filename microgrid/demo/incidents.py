"""What goes wrong on the way, scripted by the seed: a coordinator restart
and a meter power cut. Pure planning; the neighbourhood carries them out
at their simulated times (microgrid/demo/neighbourhood.py).

- a **restart**: one coordinator stops (its trading cancelled, its overlay
  node, CoAP server and databases closed) and starts again from its files,
  within one simulated instant, as a systemd restart would: what was in
  flight is picked up from the database (trading/service.py `resume`);
- a **power cut**: one meter process is killed (SIGKILL: nothing saved
  on the way out) and boots again after the outage from its flash folder;
  readings already on flash go out after the reboot, the sequence goes on,
  and the household draws nothing while the power is off.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DAY = 86400


@dataclass(frozen=True)
class Incident:
    kind: str  # "restart" or "power cut"
    at: int  # simulated Unix s
    target: str  # coordinator or meter name
    outage_s: int = 0  # power cuts: how long the meter is off

    def describe(self) -> str:
        if self.kind == "restart":
            return f"coordinator {self.target} restarted"
        return f"meter {self.target} lost power for {self.outage_s // 60} min"


def plan_incidents(seed: int, start: float, days: float, coordinators: list[str], meters: list[str],
                   step_s: int = 60) -> list[Incident]:
    """A restart of one coordinator (not the overlay's bootstrap node,
    when there is another) and a power cut of one meter, at seeded times
    inside the run, on whole `step_s` (a reading time)."""
    rng = random.Random(f"incidents/{seed}")
    span = days * DAY

    def when(lo: float, hi: float) -> int:
        t = start + rng.uniform(lo, hi) * span
        return int(t) // step_s * step_s

    out = []
    restartable = coordinators[1:] or coordinators
    out.append(Incident("restart", when(0.4, 0.7), rng.choice(restartable)))
    if meters:
        outage = int(min(2 * 3600, max(step_s * 5, 0.05 * span))) // step_s * step_s
        out.append(Incident("power cut", when(0.15, 0.35), rng.choice(meters), outage))
    return sorted(out, key=lambda i: i.at)
