"""[link]: the OSCORE security contexts and what unprotected CoAP may still do."""

from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("accept", "refuse")


@dataclass
class LinkSettings:
    # Security contexts (aiocoap's directory format, secrets mode 0600):
    # meters/<device id>/ and installers/<name>/; relative to the database.
    contexts_dir: str = "oscore"
    # Readings over plain CoAP: "accept" while meters are being migrated
    # (re-flashed with `microgrid flash`, which gives them a context), then
    # "refuse": unprotected readings get 4.01 and are not stored.
    unprotected_readings: str = "accept"
    # POST /devices with the installer token in clear (flash tools without
    # an installer context): "accept" or "refuse". Over OSCORE the
    # installer's context is the credential.
    unprotected_registration: str = "accept"
    # Failed registrations allowed per source address within the window,
    # then 4.29 until the window has passed (token guessing, replays).
    registration_failures: int = 5
    registration_window_s: int = 600

    def validate(self, section: str) -> None:
        for key in ("unprotected_readings", "unprotected_registration"):
            value = getattr(self, key)
            if value not in POLICIES:
                raise ValueError(f"{section}.{key}={value!r}: expected one of {', '.join(POLICIES)}")
        if not self.contexts_dir:
            raise ValueError(f"{section}.contexts_dir: expected a directory path")
        if isinstance(self.registration_failures, bool) or not 1 <= self.registration_failures <= 1000:
            raise ValueError(f"{section}.registration_failures={self.registration_failures!r}: expected an integer in 1..1000")
        if isinstance(self.registration_window_s, bool) or not 1 <= self.registration_window_s <= 86400:
            raise ValueError(f"{section}.registration_window_s={self.registration_window_s!r}: expected an integer in 1..86400")
