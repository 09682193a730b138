"""Which channel pays a seller next, and when to move to a new one.

A channel stops taking payments some time before its refund's lock time
(the close margin: the seller closes it then) and when its capacity is
used up. A buyer that waited for `pay` to refuse would stall its stream
for a whole open (several round trips and a funding broadcast) at the
worst moment, or keep retrying a dead channel. So a channel is *usable*
for a payment only while

- it is open,
- the clock is more than `renew_before_s` before its close margin begins
  (a payee with a wider margin than ours, or a slow open, still finds the
  old channel working while the new one is set up), and
- after the payment at least `reserve_sat` would be left (the seller
  closes a channel with less than its `full_below_sat` left; with the same
  figure on both sides the buyer has moved on before that).

Among usable channels to a seller the one expiring first is used, so an
older channel is used up before a newer one; when none is usable a new one
is opened and the unusable ones are asked to close. Pure: the service
does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..channels.channel import PayerChannel, State

# Codes of a payee's error answer that say this channel takes no more
# payments (it closed it, it is past its margin, full, or it lost it):
# move to a new channel and pay there.
ROLL_OVER_CODES = frozenset({"state", "locktime", "amount", "dust", "unknown-channel"})


@dataclass(frozen=True)
class RolloverPolicy:
    renew_before_s: int = 86_400
    reserve_sat: int = 1_000

    def usable(self, ch: PayerChannel, now: float, amount: int) -> bool:
        if ch.state != State.OPEN:
            return False
        if now >= ch.terms.refund_locktime - ch.policy.close_margin - self.renew_before_s:
            return False
        return ch.remaining - amount >= self.reserve_sat

    def pick(self, channels: Iterable[tuple[bytes, PayerChannel]], now: float, amount: int,
             exclude: frozenset[bytes] | set[bytes] = frozenset()) -> bytes | None:
        """The usable channel (id) expiring first, or None: open a new one."""
        best: tuple[int, bytes] | None = None
        for cid, ch in channels:
            if cid in exclude or not self.usable(ch, now, amount):
                continue
            if best is None or ch.terms.refund_locktime < best[0]:
                best = (ch.terms.refund_locktime, cid)
        return None if best is None else best[1]

    def to_retire(self, channels: Iterable[tuple[bytes, PayerChannel]], now: float, amount: int,
                  exclude: frozenset[bytes] | set[bytes] = frozenset()) -> list[bytes]:
        """Open channels that cannot take a payment of `amount` (the size
        we pay in) while another one does it: past the renew point, or too
        little left. Their payee is asked to close them now, rather than
        holding the rest of their capacity to the lock time."""
        return [cid for cid, ch in channels
                if ch.state == State.OPEN and cid not in exclude and not self.usable(ch, now, amount)]
