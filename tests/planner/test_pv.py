"""The pvlib forecast is physically sane: nothing at night, the peak near
solar noon, proportional to the array's size, more facing the sun."""

from __future__ import annotations

import pytest

from microgrid.coordinator.planner.model import PlanInputError
from microgrid.coordinator.planner.pv import PvArray, nowcast, observed_share, pv_forecast_wh

JUNE_21 = 1_782_000_000 - 1_782_000_000 % 86_400  # a UTC midnight, 2026-06-21
DEC_21 = JUNE_21 + 183 * 86_400
AMSTERDAM = dict(latitude=52.37, longitude=4.90, tilt_deg=35.0, azimuth_deg=180.0)


def test_zero_at_night_and_peak_near_solar_noon() -> None:
    wh = pv_forecast_wh(PvArray(kwp=5.0, **AMSTERDAM), JUNE_21, 900, 96)
    # Sunset ~20:00 UTC, sunrise ~03:20 UTC in Amsterdam at midsummer.
    assert wh[:12] == [0.0] * 12 and wh[84:] == [0.0] * 12
    # Solar noon at 4.9 E is ~11:40 UTC: slot 46 (11:30-11:45), within one slot.
    assert abs(max(range(96), key=wh.__getitem__) - 46) <= 1
    # A clear midsummer day: 5-7 kWh per kWp in the Netherlands.
    assert 25_000 < sum(wh) < 35_000
    assert max(wh) < 5.0 * 1000 * 0.25  # never above nameplate


def test_scales_with_kwp_and_the_inverter_clips() -> None:
    one = pv_forecast_wh(PvArray(kwp=1.0, **AMSTERDAM), JUNE_21, 900, 96)
    four = pv_forecast_wh(PvArray(kwp=4.0, **AMSTERDAM), JUNE_21, 900, 96)
    assert four == pytest.approx([4 * x for x in one], rel=1e-9)
    clipped = pv_forecast_wh(PvArray(kwp=4.0, inverter_kw=2.0, **AMSTERDAM), JUNE_21, 900, 96)
    assert max(clipped) == pytest.approx(500.0)  # 2 kW for 15 min
    assert pv_forecast_wh(PvArray(kwp=0.0, **AMSTERDAM), JUNE_21, 900, 96) == [0.0] * 96


def test_facing_the_sun_and_summer_make_more() -> None:
    south = sum(pv_forecast_wh(PvArray(kwp=1.0, **AMSTERDAM), DEC_21, 3600, 24))
    north = sum(pv_forecast_wh(PvArray(kwp=1.0, **(AMSTERDAM | {"azimuth_deg": 0.0})), DEC_21, 3600, 24))
    summer = sum(pv_forecast_wh(PvArray(kwp=1.0, **AMSTERDAM), JUNE_21, 3600, 24))
    assert north < south / 2
    assert south < summer / 2
    shaded = sum(pv_forecast_wh(PvArray(kwp=1.0, sky_share=0.5, **AMSTERDAM), JUNE_21, 3600, 24))
    assert shaded == pytest.approx(summer / 2)


def test_southern_hemisphere_noon_and_season() -> None:
    sydney = dict(latitude=-33.87, longitude=151.21, tilt_deg=30.0, azimuth_deg=0.0)  # north-facing
    wh = pv_forecast_wh(PvArray(kwp=1.0, **sydney), DEC_21 - 86_400, 3600, 48)
    # Solar noon ~01:50 UTC in Sydney: the best hour is 01:00-02:00 or 02:00-03:00 UTC.
    assert max(range(24), key=wh.__getitem__) in (1, 2)
    assert sum(wh[:24]) > sum(pv_forecast_wh(PvArray(kwp=1.0, **sydney), JUNE_21, 3600, 24))


@pytest.mark.parametrize("field,value", [("latitude", 91.0), ("kwp", -1.0), ("tilt_deg", float("nan")),
                                         ("sky_share", 1.5)])
def test_an_impossible_array_is_refused(field: str, value: float) -> None:
    with pytest.raises(PlanInputError, match=f"pv.{field}="):
        PvArray(**(AMSTERDAM | {"kwp": 1.0, field: value}))


def test_nowcast_leans_the_next_hours_on_the_clouds_just_seen() -> None:
    clear = [1000.0] * 24
    assert nowcast(clear, 0.8, None, 3600) == [800.0] * 24
    now = nowcast(clear, 0.8, 0.3, 3600)
    assert now[0] == pytest.approx(300.0)  # this hour: what was just seen
    assert now[3] == pytest.approx(1000 * (0.3 * 0.36788 + 0.8 * 0.63212), rel=1e-4)  # after tau
    assert now[23] == pytest.approx(800.0, rel=1e-3)  # tomorrow: the usual
    assert observed_share(450.0, 900.0, 5.0, 900) == 0.5
    assert observed_share(450.0, 10.0, 5.0, 900) is None  # dawn: the ratio means nothing
    assert observed_share(None, 900.0, 5.0, 900) is None
    assert observed_share(5000.0, 900.0, 5.0, 900) == 1.2  # a meter glitch is capped
