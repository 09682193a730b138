"""The [updates] section of the coordinator's configuration.

    [updates]
    enabled = false
    folder = "releases"          # held releases (relative to the database's folder)
    release_keys = ["02ab..."]   # public keys whose releases this coordinator passes on and offers
    board = "esp32-devkitc"      # the board its meters are (what it offers them)
    window = "02:00-05:00"       # local time meters are offered updates; "" = any time
    rate_bytes_s = 16384         # peer fetches: bytes per second, so readings and trading keep the link
    announce_ttl_s = 3600
    canary = 2                   # staged rollout: 2 meters first, the rest once both confirmed (0: all at once)
"""

from __future__ import annotations

from dataclasses import dataclass, field


class UpdatesSettingsError(ValueError):
    pass


def parse_window(text: str) -> tuple[int, int] | None:
    """"HH:MM-HH:MM" -> (start, end) minutes of the day; "" -> None (any
    time). A window may span midnight ("23:00-04:00")."""
    if text == "":
        return None
    try:
        a, b = text.split("-")
        out = []
        for part in (a, b):
            h, m = part.split(":")
            hh, mm = int(h), int(m)
            if not (0 <= hh < 24 and 0 <= mm < 60):
                raise ValueError
            out.append(hh * 60 + mm)
    except ValueError:
        raise UpdatesSettingsError(f"updates.window={text!r}: expected \"HH:MM-HH:MM\" or \"\"") from None
    if out[0] == out[1]:
        raise UpdatesSettingsError(f"updates.window={text!r}: start and end are the same")
    return out[0], out[1]


def in_window(window: tuple[int, int] | None, minute_of_day: int) -> bool:
    if window is None:
        return True
    start, end = window
    if start < end:
        return start <= minute_of_day < end
    return minute_of_day >= start or minute_of_day < end


@dataclass
class UpdatesSettings:
    enabled: bool = False
    folder: str = "releases"
    release_keys: list[str] = field(default_factory=list)
    board: str = "esp32-devkitc"
    window: str = ""
    rate_bytes_s: int = 16384
    announce_ttl_s: int = 3600
    canary: int = 0  # staged rollout: meters offered a release first; the rest once they confirmed it (0: all)

    def keys(self) -> list[bytes]:
        return [bytes.fromhex(k) for k in self.release_keys]

    def validate(self, section: str = "updates") -> None:
        if not isinstance(self.enabled, bool):
            raise UpdatesSettingsError(f"{section}.enabled={self.enabled!r}: expected true or false")
        if not isinstance(self.release_keys, list) or len(self.release_keys) > 4:
            raise UpdatesSettingsError(f"{section}.release_keys: expected a list of at most 4 public keys in hex")
        for k in self.release_keys:
            ok = isinstance(k, str) and len(k) == 66 and k[:2] in ("02", "03")
            try:
                bytes.fromhex(k)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise UpdatesSettingsError(f"{section}.release_keys: {k!r} is not a compressed public key "
                                           "(66 hex characters, 02.. or 03..)")
        if self.enabled and not self.release_keys:
            raise UpdatesSettingsError(f"{section}.enabled = true needs release_keys: releases are checked "
                                       "against them before they are stored, passed on or offered")
        if not isinstance(self.board, str) or not self.board:
            raise UpdatesSettingsError(f"{section}.board={self.board!r}: expected a board name")
        parse_window(self.window)
        if isinstance(self.rate_bytes_s, bool) or not isinstance(self.rate_bytes_s, int) or \
                not 1024 <= self.rate_bytes_s <= 10_000_000:
            raise UpdatesSettingsError(f"{section}.rate_bytes_s={self.rate_bytes_s!r}: expected 1024..10000000")
        if isinstance(self.canary, bool) or not isinstance(self.canary, int) or not 0 <= self.canary <= 10000:
            raise UpdatesSettingsError(f"{section}.canary={self.canary!r}: expected 0..10000 meters")
        if isinstance(self.announce_ttl_s, bool) or not isinstance(self.announce_ttl_s, int) or \
                not 60 <= self.announce_ttl_s <= 24 * 3600:
            raise UpdatesSettingsError(f"{section}.announce_ttl_s={self.announce_ttl_s!r}: expected 60..86400")
