"""How many decimals the published statistics carry, per unit (SDMX attribute ``DECIMALS``).

A monthly mean or a consumption summed over thousands of converted readings carries float noise
(``104.99999999999977`` kWh for 105 after a MWh conversion) and a precision the sensors never had.
Statistics round their values (mean, min, max, total consumption) to the decimals of the metric's
unit; raw series and the metrics endpoints keep full precision. Units not listed (a metric added by
``CITYINGEST_CATALOGUE_FILE``) get :data:`DEFAULT_DECIMALS`. docs/api.md states the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

DECIMALS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "Cel": 2,
        "%RH": 1,
        "ppm": 0,
        "count": 1,
        "kWh": 3,
        "kW": 3,
        "m3": 3,
        "m3/h": 3,
        "bar": 3,
        "NTU": 2,
        "mg/L": 2,
        "V": 1,
        "A": 2,
        "Hz": 3,
        "ug/m3": 1,
        "dBA": 1,
    }
)
DEFAULT_DECIMALS: Final = 3


def decimals_of(unit: str) -> int:
    """The decimals statistics in ``unit`` are published with."""
    return DECIMALS.get(unit, DEFAULT_DECIMALS)


def rounded(value: float | None, decimals: int) -> float | None:
    """``value`` rounded half-to-even to ``decimals`` places (None stays None)."""
    return None if value is None else round(float(value), decimals)
