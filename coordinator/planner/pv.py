"""PV forecast: what the household's array makes under a clear sky, by slot.

pvlib (the maintained PV modelling library of Sandia's PV Performance
Modeling Collaborative) does the physics, with nothing downloaded at run
time:
- sun position (NREL SPA, pvlib.solarposition),
- clear-sky irradiance by the Ineichen-Perez model, whose Linke turbidity
  comes from the monthly climatology pvlib ships (LinkeTurbidities.h5,
  read with h5py, a pvlib dependency) and whose site altitude from the
  shipped Altitude.h5 when not configured,
- irradiance on the tilted plane (isotropic sky, with ground reflection),
- cell temperature (Faiman, 20 C air and 1 m/s wind: a clear day's
  typical values) and PVWatts DC power with -0.4 %/C,
- then the system losses (wiring, soiling, inverter: 14 % as PVWatts'
  default) and the inverter's AC limit.

`sky_share` scales the clear-sky figure to what is expected on average
(clouds): 1.0 is clear sky; the planner's default is a little lower.
`nowcast` leans the next hours on the share of clear sky the array gave
in the last slot, where a PV meter tells it (clouds persist for hours).
The clear-sky model is Ineichen, not 'simplified_solis' or 'haurwitz':
everything it needs ships with pvlib. Each slot's energy is the mean of the power at three instants spread
over the slot, times its length.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from .model import PlanInputError, _finite


@dataclass(frozen=True)
class PvArray:
    latitude: float
    longitude: float
    tilt_deg: float = 30.0
    azimuth_deg: float = 180.0  # 180: facing south (pvlib's convention, clockwise from north)
    kwp: float = 0.0  # DC nameplate; 0: no array
    losses_pct: float = 14.0
    inverter_kw: float = 0.0  # AC limit; 0: none
    altitude_m: float | None = None  # None: pvlib's shipped altitude map
    sky_share: float = 1.0

    def __post_init__(self) -> None:
        _finite("pv.latitude", self.latitude, -90.0, 90.0)
        _finite("pv.longitude", self.longitude, -180.0, 180.0)
        _finite("pv.tilt_deg", self.tilt_deg, 0.0, 90.0)
        _finite("pv.azimuth_deg", self.azimuth_deg, 0.0, 360.0)
        _finite("pv.kwp", self.kwp, 0.0, 10_000.0)
        _finite("pv.losses_pct", self.losses_pct, 0.0, 99.0)
        _finite("pv.inverter_kw", self.inverter_kw, 0.0, 10_000.0)
        _finite("pv.sky_share", self.sky_share, 0.0, 1.0)
        if self.altitude_m is not None:
            _finite("pv.altitude_m", self.altitude_m, -500.0, 9000.0)


SAMPLES_PER_SLOT = 3


def pv_forecast_wh(array: PvArray, start: int, slot_s: int, slots: int) -> list[float]:
    """Expected PV energy (Wh, AC) in each of `slots` slots from `start`."""
    if slots < 1 or slot_s < 1:
        raise PlanInputError(f"slots={slots}, slot_s={slot_s}: expected positive integers")
    if array.kwp == 0:
        return [0.0] * slots
    # Imported here: pvlib and pandas take a second to load, and the
    # configuration (which builds a PvArray) must not wait for them.
    import numpy as np
    import pandas as pd
    import pvlib

    with warnings.catch_warnings():
        # pvlib 0.16 asks pandas 3 for DatetimeIndex.dayofyear, deprecated there (harmless).
        warnings.filterwarnings("ignore", message=r".*dayofyear is deprecated")
        return _forecast(array, start, slot_s, slots, np, pd, pvlib)


def _forecast(array: PvArray, start: int, slot_s: int, slots: int, np: Any, pd: Any, pvlib: Any) -> list[float]:
    # Instants at 1/6, 3/6, 5/6 of each slot (midpoints of its thirds).
    offsets = (np.arange(SAMPLES_PER_SLOT) + 0.5) / SAMPLES_PER_SLOT * slot_s
    seconds = (start + np.arange(slots)[:, None] * slot_s + offsets[None, :]).ravel()
    times = pd.DatetimeIndex(pd.to_datetime(seconds, unit="s", utc=True))
    site = pvlib.location.Location(array.latitude, array.longitude, tz="UTC", altitude=array.altitude_m)
    sun = site.get_solarposition(times)
    sky = site.get_clearsky(times, model="ineichen", solar_position=sun)
    poa = pvlib.irradiance.get_total_irradiance(array.tilt_deg, array.azimuth_deg, sun["apparent_zenith"],
                                                sun["azimuth"], sky["dni"], sky["ghi"], sky["dhi"], albedo=0.2,
                                                model="isotropic")
    poa_w = np.nan_to_num(np.asarray(poa["poa_global"], dtype=float), nan=0.0).clip(min=0.0)
    cell_c = pvlib.temperature.faiman(poa_w, temp_air=20.0, wind_speed=1.0)
    dc_w = pvlib.pvsystem.pvwatts_dc(poa_w, cell_c, pdc0=array.kwp * 1000.0, gamma_pdc=-0.004)
    ac_w = np.asarray(dc_w, dtype=float) * (1.0 - array.losses_pct / 100.0) * array.sky_share
    if array.inverter_kw > 0:
        ac_w = np.minimum(ac_w, array.inverter_kw * 1000.0)
    ac_w = np.nan_to_num(ac_w, nan=0.0).clip(min=0.0)
    per_slot = ac_w.reshape(slots, SAMPLES_PER_SLOT).mean(axis=1) * slot_s / 3600.0
    return [float(v) for v in per_slot]


def observed_share(observed_wh: float | None, clear_wh: float, kwp: float, slot_s: int) -> float | None:
    """The share of clear-sky output a slot really gave (clouds now), or
    None when it says nothing: no observation, or the sun too low (clear
    sky under 5 % of nameplate) for a ratio to mean anything."""
    if observed_wh is None or kwp <= 0 or clear_wh < 0.05 * kwp * 1000 * slot_s / 3600:
        return None
    return min(max(observed_wh / clear_wh, 0.0), 1.2)


def nowcast(clear_wh: list[float], sky_share: float, observed: float | None, slot_s: int,
            tau_s: float = 3 * 3600) -> list[float]:
    """Clear-sky energy per slot -> expected: the first slots lean on the
    share of clear sky just observed (clouds persist for hours), fading to
    the usual `sky_share` with time constant `tau_s`."""
    if observed is None:
        return [x * sky_share for x in clear_wh]
    return [x * (w * observed + (1 - w) * sky_share)
            for k, x in enumerate(clear_wh) for w in (math.exp(-k * slot_s / tau_s),)]
