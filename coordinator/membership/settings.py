"""The [zone] section of the coordinator's configuration.

    [zone]
    id = "42ffc5f5..."            # 64 hex digits, printed by `microgrid zone found`
    name = "elm-street"           # = [market] zone
    admins = ["02ab...", "03cd...", "02ef..."]
    threshold = 2                 # k: admin signatures a record needs
    founded = 1790000000          # the founding time, part of the id
    records_dir = "zone-records"  # record files an installer copies in
    cache_path = "zone-cache.cbor"
    refresh_s = 300               # read the board this often (clock seconds)
    republish_s = 5400            # keep our records alive this often

The id is the hash of the founding record built from name, admins,
threshold and founded: a mistyped key, or a zone someone else founded with
the same name, gives another id and the coordinator refuses to start.
Without an id (the default) the coordinator trades with anyone, as before
membership existed, and says so in its log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .records import MembershipError, Zone, found


class ZoneSettingsError(ValueError):
    """A [zone] setting is wrong."""


@dataclass
class ZoneSettings:
    id: str = ""
    name: str = ""
    admins: list[str] = field(default_factory=list)
    threshold: int = 0
    founded: int = 0
    records_dir: str = "zone-records"
    cache_path: str = "zone-cache.cbor"
    refresh_s: int = 300
    republish_s: int = 5400

    @property
    def enabled(self) -> bool:
        return bool(self.id)

    def zone(self) -> Zone:
        """The founded zone these settings name (validated)."""
        try:
            admins = [bytes.fromhex(a) for a in self.admins]
            return found(self.name, admins, self.threshold, self.founded)
        except (ValueError, TypeError) as e:
            raise ZoneSettingsError(f"zone: {e}") from None

    def validate(self, section: str = "zone") -> "ZoneSettings":
        for name in ("refresh_s", "republish_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 6 * 3600 - 1:
                raise ZoneSettingsError(f"{section}.{name}={v!r}: expected seconds in 1..{6 * 3600 - 1}")
        if not self.id:
            if self.admins or self.threshold:
                raise ZoneSettingsError(f"{section}.id is missing: admins and threshold name a zone only with its id "
                                        "(from `microgrid zone found`)")
            return self
        if not isinstance(self.admins, list) or not all(isinstance(a, str) for a in self.admins):
            raise ZoneSettingsError(f"{section}.admins: expected a list of admin public keys (66 hex digits)")
        for n, a in enumerate(self.admins):
            if not (len(a) == 66 and a[:2] in ("02", "03") and all(c in "0123456789abcdefABCDEF" for c in a)):
                raise ZoneSettingsError(f"{section}.admins[{n}]={a!r}: expected a compressed public key, 66 hex "
                                        "digits starting 02 or 03")
        try:
            zone = self.zone()
        except MembershipError as e:
            raise ZoneSettingsError(f"{section}: {e}") from None
        if self.id.lower() != zone.id_hex:
            raise ZoneSettingsError(f"{section}.id={self.id!r} is not the id of the zone named by {section}.name, "
                                    f"admins, threshold and founded ({zone.id_hex}): one of them is mistyped, or "
                                    "this is another zone")
        if not self.records_dir or not self.cache_path:
            raise ZoneSettingsError(f"{section}.records_dir and {section}.cache_path: expected file paths")
        return self
