"""A founded zone with admins and members, for membership tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from bitcoinx import PrivateKey

from microgrid.coordinator.membership import records as R

DAY = 86400
T0 = 1_790_000_000


def pub(k: PrivateKey) -> bytes:
    return k.public_key.to_bytes(compressed=True)


@dataclass
class Zone:
    admins: list[PrivateKey]
    k: int
    name: str = "elm-street"
    zone: R.Zone = field(init=False)

    def __post_init__(self) -> None:
        self.zone = R.found(self.name, [pub(a) for a in self.admins], self.k, T0 - DAY)

    def admit(self, member: bytes, issued: int = T0, days: int = 365, point: str = "", signers: int | None = None,
              feeder: str = "feeder-1") -> bytes:
        r = R.admission(self.zone, member, point or f"EAN-{member.hex()[2:14]}", feeder, issued, issued + days * DAY)
        return R.signed(r, *self.admins[:self.k if signers is None else signers])

    def revoke(self, member: bytes, issued: int = T0 + DAY, reason: str = "moved away") -> bytes:
        return R.signed(R.revocation(self.zone, member, issued, reason), *self.admins[:self.k])


def zone(n: int = 3, k: int = 2, name: str = "elm-street") -> Zone:
    return Zone([PrivateKey.from_random() for _ in range(n)], k, name)
