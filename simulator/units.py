"""Devices that report in accepted non-canonical units (Wh, degF, L/s, ...), and what the bridge makes of it.

The conversions are the catalogue's (``core``), the same the bridge applies: a reading's canonical value
stays the truth's integer thousandths; the device writes it in its own unit, and the bridge's float
arithmetic brings it back to within float rounding of that value.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace
from decimal import Context, Decimal
from typing import Final

from core.catalogue import Catalogue, UnitConversion
from simulator.model import Device, SimReading

_DIGITS: Final = Context(prec=15)
"""Significant digits of a converted value: the device writes ``70.7`` degF, not ``70.69999999999999``."""
ROUND_TRIP_TOLERANCE: Final = 1e-12
"""Largest relative gap between the bridge's conversion and the canonical value the truth counts."""


def alternative_units(catalogue: Catalogue, metric: str) -> tuple[UnitConversion, ...]:
    """The conversions the bridge accepts into ``metric``'s canonical unit, by source unit."""
    canonical = catalogue[metric].unit
    return tuple(
        sorted(
            (c for (_, target), c in catalogue.conversions().items() if target == canonical),
            key=lambda c: c.source,
        )
    )


def assign_units(
    devices: Sequence[Device], share: float, catalogue: Catalogue, rng: random.Random
) -> list[Device]:
    """Give a ``share`` of the devices a non-canonical unit for some of their metrics (at least one).

    A unit is fixed per device and metric, as on a real meter: a counter switching units between
    readings would differ from itself by a float rounding and look like a meter reset.
    """
    out: list[Device] = []
    for device in devices:
        options = {m: alternative_units(catalogue, m) for m in device.metrics}
        convertible = [m for m in device.metrics if options[m]]
        if not convertible or rng.random() >= share:
            out.append(device)
            continue
        chosen = [m for m in convertible if rng.random() < 0.5] or [rng.choice(convertible)]
        units = tuple((m, rng.choice(options[m]).source) for m in chosen)
        out.append(replace(device, units=units))
    return out


def in_unit(reading: SimReading, conversion: UnitConversion, low: float, high: float) -> SimReading:
    """``reading`` as written in ``conversion.source`` units, with the value the bridge will compute.

    Falls back to the canonical unit when the bridge's arithmetic would not land within
    :data:`ROUND_TRIP_TOLERANCE` of the canonical value, or would flag the range differently (a gauge
    clamped to a bound may convert to just past it). With 15 significant digits the first never
    happens for the shipped catalogue, and a counter (at least 0, no maximum) cannot cross a bound by
    a scale: a meter keeps its unit.
    """
    value = reading.value
    if conversion.is_alias:
        return replace(reading, unit=conversion.source, sent=value)
    exact = _DIGITS.divide(
        _DIGITS.subtract(Decimal(reading.value_milli) / 1000, Decimal(repr(conversion.offset))),
        Decimal(repr(conversion.scale)),
    )
    sent = float(exact)
    # Exactly the bridge's arithmetic: float(value), then UnitConversion.apply.
    converted = conversion.apply(sent)
    close = math.isfinite(converted) and abs(converted - value) <= ROUND_TRIP_TOLERANCE * max(1.0, abs(value))
    if not close or (converted < low or converted > high) != reading.out_of_range:
        return reading
    return replace(reading, unit=conversion.source, sent=sent, converted=converted)
