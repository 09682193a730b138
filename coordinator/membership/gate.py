"""The one question every layer asks: is this key a current member?

Built once in app.py from the roster and the coordinator's clock, and
handed to the overlay (accept filter), the directory, the market's book
collector, channel admission and the trading service (metering and live
totals). Records on the membership board itself are let through the
overlay whoever published them: they carry their own admin signatures,
which the roster checks.
"""

from __future__ import annotations

from typing import Any, Callable

from .roster import Roster

BOARD_PREFIX = "mg/members/"


def board_key(zone_id_hex: str) -> str:
    """The overlay key a zone's membership records are published under."""
    return BOARD_PREFIX + zone_id_hex


class MembershipGate:
    def __init__(self, roster: Roster, clock: Callable[[], float]) -> None:
        self.roster = roster
        self.clock = clock
        self.board = board_key(roster.zone.id_hex)
        self.refused = 0

    def is_member(self, key: bytes) -> bool:
        """True if `key` (a compressed public key) is a current member."""
        ok = self.roster.is_member(bytes(key), self.clock())
        if not ok:
            self.refused += 1
        return ok

    def accept_record(self, record: Any) -> bool:
        """The overlay's accept filter: a record read under the board, or
        one published by a current member."""
        return record.key == self.board or self.is_member(record.publisher)

    def members_only(self, values: dict[bytes, Any]) -> dict[bytes, Any]:
        """The entries of a publisher-keyed mapping whose key is a member."""
        return {k: v for k, v in values.items() if self.is_member(k)}
