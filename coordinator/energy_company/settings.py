"""The [openadr] section: the coordinator as an OpenADR 2.0b VEN of the
energy company's VTN (off by default).

    [openadr]
    enabled = true
    vtn_url = "https://vtn.example.com/OpenADR2/Simple/2.0b"
    ven_name = "microgrid-elm"
    ven_id = ""                      # "": the VTN assigns one at registration
    price_scale = 100000.0           # ELECTRICITY_PRICE / ENERGY_PRICE payload x this = sat/kWh
                                     # (e.g. EUR/kWh -> sat/kWh); 1.0: the VTN sends sat/kWh
    simple_multipliers = [1.0, 1.5, 2.0, 3.0]  # SIMPLE level 0..3: the import tariff x this
    max_price_sat_per_kwh = 100000   # a price event beyond this is refused (optOut)
    cert = ""                        # TLS client certificate and key (PEM), CA file, and
    key = ""                         # the VTN's certificate fingerprint: all "" on a
    ca_file = ""                     # plain-HTTP test VTN
    vtn_fingerprint = ""
    retry_s = 60                     # the VTN unreachable: register again after this
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class OpenAdrSettingsError(ValueError):
    """An [openadr] setting is wrong: names the key, the value and what is allowed."""


@dataclass
class OpenAdrSettings:
    enabled: bool = False
    vtn_url: str = ""
    ven_name: str = "microgrid"
    ven_id: str = ""
    price_scale: float = 1.0
    simple_multipliers: list[float] = field(default_factory=lambda: [1.0, 1.5, 2.0, 3.0])
    max_price_sat_per_kwh: int = 100_000
    cert: str = ""
    key: str = ""
    ca_file: str = ""
    vtn_fingerprint: str = ""
    retry_s: float = 60.0

    def validate(self, section: str = "openadr") -> "OpenAdrSettings":
        def number(name: str, lo: float, hi: float) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise OpenAdrSettingsError(f"{section}.{name}={v!r}: expected a number in {lo}..{hi}")

        if not isinstance(self.enabled, bool):
            raise OpenAdrSettingsError(f"{section}.enabled={self.enabled!r}: expected true or false")
        for name in ("vtn_url", "ven_name", "ven_id", "cert", "key", "ca_file", "vtn_fingerprint"):
            if not isinstance(getattr(self, name), str):
                raise OpenAdrSettingsError(f"{section}.{name}: expected a string")
        if self.enabled and not self.vtn_url.startswith(("http://", "https://")):
            raise OpenAdrSettingsError(f"{section}.vtn_url={self.vtn_url!r}: expected the VTN's http(s):// URL "
                                       "(enabled = true needs it)")
        if self.enabled and not self.ven_name:
            raise OpenAdrSettingsError(f"{section}.ven_name: expected a name for this VEN")
        if bool(self.cert) != bool(self.key):
            raise OpenAdrSettingsError(f"{section}.cert and {section}.key: expected both or neither")
        number("price_scale", 1e-9, 1e12)
        number("max_price_sat_per_kwh", 1, 10**9)
        number("retry_s", 1, 86_400)
        m = self.simple_multipliers
        if not isinstance(m, list) or len(m) != 4 or not all(
                not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) and 0 <= x <= 1000
                for x in m):
            raise OpenAdrSettingsError(f"{section}.simple_multipliers={m!r}: expected 4 numbers in 0..1000 "
                                       "(SIMPLE levels 0 normal, 1 moderate, 2 high, 3 special)")
        return self
