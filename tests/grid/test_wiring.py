"""[grid] in the appliance: the section is part of the configuration and
needs the market; limits installed with MarketSettings.use_network bound
every clearing the market's rules make (the three clearers share them)."""

from __future__ import annotations

import pytest

from microgrid.coordinator.config import Config, ConfigError, from_dict
from microgrid.coordinator.grid.model import radial_feeder
from microgrid.coordinator.grid.sensitivity import compute_limits
from microgrid.coordinator.market.clearing import clear_interval
from microgrid.coordinator.market.settings import MarketSettings
from tests.market.helpers import KEYS, START, order

PK = [k.public_key.to_bytes() for k in KEYS]


def test_grid_settings_are_a_section_and_need_the_market() -> None:
    assert not Config().grid.enabled
    with pytest.raises(ConfigError, match="grid.enabled = true needs market.enabled"):
        from_dict({"grid": {"enabled": True, "network": "kerber_dorfnetz"}})
    with pytest.raises(ConfigError, match="grid.vmax_pu"):
        from_dict({"grid": {"vmax_pu": "high"}})
    with pytest.raises(ConfigError, match="grid._network: unknown setting|grid.network_limits: unknown"):
        from_dict({"grid": {"network_limits": 1}})
    with pytest.raises(ConfigError, match="market._network: unknown setting"):
        from_dict({"market": {"_network": 1}})  # the installed limits are not a setting


def test_installed_limits_bound_the_markets_clearing_and_show_in_its_hash() -> None:
    model = radial_feeder(4, length_km=0.2, households=PK[:4], utility=[PK[4]])
    limits = compute_limits(model)
    market = MarketSettings(zone="zone-a")
    book = [order("sell", 15000, 30, who=3), order("sell", 10000, 35, who=2), order("buy", 2000, 150, who=0),
            order("buy", 100_000, 40, who=4)]
    free = clear_interval(book, "zone-a", START, 900, market.rules())
    market.use_network(limits)
    assert market.rules().network is limits and MarketSettings().rules().network is None
    held = clear_interval(book, "zone-a", START, 900, market.rules())
    assert held.volume_wh < free.volume_wh and held.hash != free.hash
