"""What goes wrong on the way, scripted by the seed: a restart of every
coordinator and power cuts of several meters. Pure planning; the
neighbourhood carries them out at their simulated times and records what
each did (microgrid/demo/neighbourhood.py).

- a **restart**: a coordinator stops (its trading cancelled, its overlay
  node, CoAP server and databases closed) and starts again from its files,
  within one simulated instant, as a systemd restart would: its channels
  are reloaded from the channel store and what was in flight is picked up
  from the database (trading/service.py `resume`). Each coordinator is
  restarted once, at its own time, so every one of them (the overlay's
  bootstrap node too) shows it can;
- a **power cut**: a meter process is killed (SIGKILL: nothing saved on
  the way out) and boots again after the outage from its flash folder;
  readings already on flash go out after the reboot, the sequence goes on,
  and the household draws nothing while the power is off.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DAY = 86400
# Part of the run the incidents fall in: power cuts early, restarts after
# (so a restart also has the meters' recovered readings to settle).
CUTS_WINDOW = (0.1, 0.45)
RESTARTS_WINDOW = (0.5, 0.9)


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


def power_cuts_for(meters: int) -> int:
    """Several meters lose power: a quarter of them, at least two (one
    when there is only one meter)."""
    return min(meters, max(2, meters // 4))


def plan_incidents(seed: int, start: float, days: float, coordinators: list[str], meters: list[str],
                   step_s: int = 60) -> list[Incident]:
    """A restart of every coordinator, each at its own time, and a power
    cut of `power_cuts_for(len(meters))` different meters, at seeded times
    inside the run on whole `step_s` (a reading time). The restarts are
    at least a reading apart (the neighbourhood checks a reading after
    each one that its neighbours find it again), in a seeded order."""
    rng = random.Random(f"incidents/{seed}")
    span = days * DAY

    def on_step(t: float) -> int:
        return int(t) // step_s * step_s

    out = []
    # One slot per coordinator, in a shuffled order; a time inside the
    # middle of each slot, so two restarts are never at the same reading.
    order = list(coordinators)
    rng.shuffle(order)
    lo, hi = RESTARTS_WINDOW
    slot = (hi - lo) / max(len(order), 1)
    prev = None
    for i, name in enumerate(order):
        at = on_step(start + (lo + slot * (i + rng.uniform(0.2, 0.8))) * span)
        if prev is not None and at < prev + 2 * step_s:  # a very short run with many coordinators
            at = prev + 2 * step_s
        out.append(Incident("restart", at, name))
        prev = at
    if meters:
        outage = int(min(2 * 3600, max(step_s * 5, 0.05 * span))) // step_s * step_s
        lo, hi = CUTS_WINDOW
        for name in rng.sample(meters, power_cuts_for(len(meters))):
            out.append(Incident("power cut", on_step(start + rng.uniform(lo, hi) * span), name, outage))
    return sorted(out, key=lambda i: (i.at, i.kind, i.target))
