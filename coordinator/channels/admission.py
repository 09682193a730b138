"""Who may open a channel to us, and how many.

Every channel a payee accepts costs it: a database row, a wallet key, a
refund signature, and later a close it must broadcast before the lock
time or lose what it earned. Left open to anyone, 200 opens from 200
random keys were 200 accepted channels (1.9 MB of database, 200 wallet
keys). So an `open` is checked here first, before anything is stored or
derived, with nothing but set lookups and a pass over the channels held in
memory:

- the sender must be a neighbour: a current member of our zone
  (`is_member`, coordinator/membership), and on the configured allow-list
  when there is one (an extra restriction). Without a zone, the allow-list
  alone decides and an empty one admits nobody;
- per peer, at most `max_open_per_peer` channels open or being opened, of
  which at most `max_pending_per_peer` not yet funded (a stalled open
  cannot pile up);
- at most `max_pending_total` unfunded channels over all peers;
- the capacity of all our incoming channels still to close (pending, open
  or closing) stays within `max_capacity_sat`: the sum a missed close
  could cost, which the operator decides.

Pure: the node passes its channels in and turns a refusal into an error
answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from .channel import PayeeChannel, State

PENDING = (State.ACCEPTED, State.REFUND_SIGNED)
LIVE = (State.ACCEPTED, State.REFUND_SIGNED, State.OPEN, State.CLOSING)


@dataclass(frozen=True)
class Refusal:
    code: str  # "forbidden" (not a neighbour) or "limit" (a cap reached)
    detail: str


@dataclass(frozen=True)
class Admission:
    allowed: frozenset[bytes] = field(default_factory=frozenset)  # 33-byte compressed keys
    max_open_per_peer: int = 4
    max_pending_per_peer: int = 1
    max_pending_total: int = 16
    max_capacity_sat: int = 200_000_000
    is_member: Callable[[bytes], bool] | None = None

    def check(self, sender: bytes, capacity: int, incoming: Iterable[tuple[bytes, PayeeChannel]]) -> Refusal | None:
        """Whether `sender` may open a channel of `capacity` sat, given our
        incoming channels as (peer key, channel); None: admitted."""
        if self.is_member is not None and not self.is_member(sender):
            return Refusal("forbidden", "your key is not a current member of this zone")
        if (self.allowed or self.is_member is None) and sender not in self.allowed:
            return Refusal("forbidden", "this coordinator does not take channels from your key")
        live = pending = pending_total = 0
        at_risk = capacity
        for peer, ch in incoming:
            if ch.state not in LIVE:
                continue
            at_risk += ch.terms.capacity
            if ch.state in PENDING:
                pending_total += 1
            if peer == sender:
                live += 1
                pending += ch.state in PENDING
        if live >= self.max_open_per_peer:
            return Refusal("limit", f"{live} channels from your key already open here: at most "
                                    f"{self.max_open_per_peer}")
        if pending >= self.max_pending_per_peer:
            return Refusal("limit", f"{pending} channels from your key still unfunded: finish or abandon them first")
        if pending_total >= self.max_pending_total:
            return Refusal("limit", "too many unfunded channels here; try again later")
        if at_risk > self.max_capacity_sat:
            return Refusal("limit", f"a channel of {capacity} sat would exceed the capacity this coordinator takes")
        return None
