"""The [planner] section of the coordinator's configuration (off by default).

    [planner]
    enabled = true
    horizon_h = 24                  # plan this far ahead, in market intervals
    latitude = 52.37                # the PV array's site
    longitude = 4.90
    pv_kwp = 5.0                    # 0: no PV
    pv_tilt_deg = 35
    pv_azimuth_deg = 180            # 180 = south
    pv_losses_pct = 14              # wiring, soiling, inverter (PVWatts' default)
    pv_inverter_kw = 0              # AC limit; 0: none
    pv_sky_share = 0.8              # expected share of clear-sky output (clouds); 1.0 = clear sky
    pv_meters = ["a1b2c3d4e5f60718"]  # devices whose export is the array's output (nowcast); [] none
    import_limit_w = 11000          # the connection's limits
    export_limit_w = 11000
    import_tariff = { time_of_day = { "00:00" = 150, "07:00" = 250, "17:00" = 400, "21:00" = 250 } }
    export_tariff = 40              # leave both out: [market]'s fixed tariffs
    battery_charge_efficiency = 0.95
    battery_discharge_efficiency = 0.95
    degradation_sat_per_kwh = 20    # wear per kWh discharged
    peak_sat_per_kw = 10            # price on the day's highest import: spreads charging over equal prices
    load_weeks = 4                  # load: same weekday and time over this many weeks
    fallback_daily_wh = 10000       # without history: a typical day of this size
    price_history_days = 14         # expected market price: same time of day over these days
    journal = "planner.db"          # decisions and why (relative: beside the database)
    keep_days = 90
    solve_time_limit_s = 5.0

Tariffs take market/pricing.py's price rules (a number, {fixed = N} or
{time_of_day = {...}}), in the local time of [market].utc_offset_s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..market.pricing import PriceRule, PricingError, parse_rule
from .pv import PvArray


class PlannerSettingsError(ValueError):
    """A [planner] setting is wrong: names the key, the value and what is allowed."""


@dataclass
class PlannerSettings:
    enabled: bool = False
    horizon_h: int = 24
    latitude: float = 0.0
    longitude: float = 0.0
    pv_kwp: float = 0.0
    pv_tilt_deg: float = 30.0
    pv_azimuth_deg: float = 180.0
    pv_losses_pct: float = 14.0
    pv_inverter_kw: float = 0.0
    pv_sky_share: float = 0.8
    pv_meters: list[str] = field(default_factory=list)
    import_limit_w: int = 11_000
    export_limit_w: int = 11_000
    import_tariff: Any = None  # None: [market].import_tariff_sat_per_kwh
    export_tariff: Any = None  # None: [market].export_tariff_sat_per_kwh
    battery_charge_efficiency: float = 0.95
    battery_discharge_efficiency: float = 0.95
    degradation_sat_per_kwh: float = 20.0
    peak_sat_per_kw: float = 10.0
    load_weeks: int = 4
    fallback_daily_wh: int = 10_000
    price_history_days: int = 14
    journal: str = "planner.db"
    keep_days: int = 90
    solve_time_limit_s: float = 5.0

    def validate(self, section: str = "planner") -> "PlannerSettings":
        def need(name: str, lo: float, hi: float, kind: type = float) -> None:
            v = getattr(self, name)
            ok = not isinstance(v, bool) and isinstance(v, (int, float) if kind is float else int) \
                and math.isfinite(v) and lo <= v <= hi
            if not ok:
                what = "an integer" if kind is int else "a number"
                raise PlannerSettingsError(f"{section}.{name}={v!r}: expected {what} in {lo}..{hi}")

        if not isinstance(self.enabled, bool):
            raise PlannerSettingsError(f"{section}.enabled={self.enabled!r}: expected true or false")
        need("horizon_h", 1, 72, int)
        need("latitude", -90, 90)
        need("longitude", -180, 180)
        need("pv_kwp", 0, 10_000)
        need("pv_tilt_deg", 0, 90)
        need("pv_azimuth_deg", 0, 360)
        need("pv_losses_pct", 0, 99)
        need("pv_inverter_kw", 0, 10_000)
        need("pv_sky_share", 0, 1)
        need("import_limit_w", 0, 10**8, int)
        need("export_limit_w", 0, 10**8, int)
        need("battery_charge_efficiency", 0.5, 1)
        need("battery_discharge_efficiency", 0.5, 1)
        need("degradation_sat_per_kwh", 0, 10**6)
        need("peak_sat_per_kw", 0, 10**6)
        need("load_weeks", 1, 52, int)
        need("fallback_daily_wh", 0, 10**6, int)
        need("price_history_days", 1, 365, int)
        need("keep_days", 1, 36_500, int)
        need("solve_time_limit_s", 0.1, 600)
        if not isinstance(self.pv_meters, list) or not all(isinstance(d, str) and 0 < len(d) <= 64
                                                            for d in self.pv_meters):
            raise PlannerSettingsError(f"{section}.pv_meters={self.pv_meters!r}: expected a list of device ids")
        if not isinstance(self.journal, str) or not self.journal:
            raise PlannerSettingsError(f"{section}.journal={self.journal!r}: expected a file path")
        if self.enabled and self.pv_kwp > 0 and self.latitude == 0 and self.longitude == 0:
            raise PlannerSettingsError(f"{section}.latitude and {section}.longitude: expected the PV array's site "
                                       f"(pv_kwp={self.pv_kwp} needs it; 0, 0 is in the Gulf of Guinea)")
        for name in ("import_tariff", "export_tariff"):
            try:
                parse_rule(f"{section}.{name}", getattr(self, name))
            except PricingError as e:
                raise PlannerSettingsError(str(e)) from None
        return self

    def tariff_rule(self, side: str, market_default: int) -> PriceRule:
        """The import ("import") or export ("export") tariff rule; [market]'s
        fixed tariff where none is set here."""
        rule = parse_rule(f"planner.{side}_tariff", getattr(self, f"{side}_tariff"))
        return rule if rule is not None else parse_rule(f"market.{side}_tariff_sat_per_kwh", market_default)  # type: ignore[return-value]

    def pv_array(self) -> PvArray:
        return PvArray(self.latitude, self.longitude, self.pv_tilt_deg, self.pv_azimuth_deg, self.pv_kwp,
                       self.pv_losses_pct, self.pv_inverter_kw, sky_share=self.pv_sky_share)
