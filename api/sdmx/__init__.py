"""SDMX-CSV of the monthly statistics, written by pysdmx (never by hand).

We write **SDMX-CSV 1.0** (the CSV format of SDMX 2.1): it is what the statistical offices' tooling
reads today (.Stat Suite, Eurostat's and the ECB's loaders, SDMX-RI and pysdmx/sdmx1 all accept it),
while SDMX-CSV 2.0 needs SDMX 3.0 infrastructure that few NSOs run yet. Switching is one import.

One row per cell and statistic. Dimensions: ``FREQ`` (M), ``REF_AREA`` (district), ``DOMAIN``,
``PROVENANCE`` (``_T`` when not broken down, ``_U`` when a device has no district), ``INDICATOR``
(the metric), ``STATISTIC`` (MEAN, MIN, MAX for gauges; TOTAL, the consumption, for counters) and
``TIME_PERIOD`` (YYYY-MM). Measure ``OBS_VALUE``. Attributes ``UNIT_MEASURE`` (the catalogue unit),
``OBS_STATUS`` (A normal, P provisional, Q suppressed, O missing), ``CONF_STATUS`` (F free,
C confidential, D secondary; with the current structure only), ``NB_DEVICES`` (devices reporting),
``COMPLETENESS`` (received / expected readings, see :mod:`api.statistics`; empty when suppressed) and
``DECIMALS`` (the decimals ``OBS_VALUE`` is rounded to, per unit: :mod:`api.decimals`).

The versioned structures behind ``/sdmx`` (:mod:`api.sdmx.structures`, stored by :mod:`api.sdmx.store`)
are the current DSD; ``/v1/statistics/monthly?format=sdmx-csv`` writes with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import pandas as pd
from pysdmx.io.csv.sdmx10.writer import write
from pysdmx.io.pd import PandasDataset
from pysdmx.model import Component, Components, Concept, DataType, Role, Schema

from api.decimals import decimals_of
from api.statistics import StatisticsCell
from core.catalogue import MetricSpec

AGENCY: Final = "CITYINGEST"
DATAFLOW: Final = "CITY_SENSORS_MONTHLY"
VERSION: Final = "1.0"
UNKNOWN: Final = "_U"

_DIMENSIONS: Final = ("FREQ", "REF_AREA", "DOMAIN", "PROVENANCE", "INDICATOR", "STATISTIC", "TIME_PERIOD")
_ATTRIBUTES: Final = ("UNIT_MEASURE", "OBS_STATUS", "NB_DEVICES", "COMPLETENESS", "DECIMALS")


def _component(cid: str, role: Role, dtype: DataType, required: bool) -> Component:
    return Component(
        id=cid,
        required=required,
        role=role,
        concept=Concept(id=cid, dtype=dtype),
        local_dtype=dtype,
        attachment_level="O" if role == Role.ATTRIBUTE else None,
    )


def schema() -> Schema:
    """The structure of the statistics dataflow."""
    comps = [
        _component(d, Role.DIMENSION, DataType.PERIOD if d == "TIME_PERIOD" else DataType.STRING, True)
        for d in _DIMENSIONS
    ]
    comps.append(_component("OBS_VALUE", Role.MEASURE, DataType.DOUBLE, False))
    comps += [
        _component("UNIT_MEASURE", Role.ATTRIBUTE, DataType.STRING, True),
        _component("OBS_STATUS", Role.ATTRIBUTE, DataType.STRING, True),
        _component("NB_DEVICES", Role.ATTRIBUTE, DataType.INTEGER, True),
        _component("COMPLETENESS", Role.ATTRIBUTE, DataType.DOUBLE, False),
        _component("DECIMALS", Role.ATTRIBUTE, DataType.INTEGER, True),
    ]
    return Schema(
        context="dataflow",
        agency=AGENCY,
        id=DATAFLOW,
        version=VERSION,
        components=Components(comps),
        name="City sensor readings, monthly",
    )


def statistics_of(spec: MetricSpec) -> tuple[str, ...]:
    """The statistics published for a metric: consumption for counters, level for gauges."""
    return ("TOTAL",) if spec.kind == "counter" else ("MEAN", "MIN", "MAX")


def _value(cell: StatisticsCell, stat: str) -> float | None:
    return {"TOTAL": cell.total_consumption, "MEAN": cell.mean, "MIN": cell.min, "MAX": cell.max}[stat]


def observation(cell: StatisticsCell, spec: MetricSpec, stat: str, places: int) -> dict[str, object]:
    """Statistic ``stat`` of a cell, past its key: time, value and the DSD's attributes (one row of a
    data message; ``places`` = the decimals of the unit)."""
    return {
        "STATISTIC": stat,
        "TIME_PERIOD": cell.period,
        "OBS_VALUE": _value(cell, stat),
        "UNIT_MEASURE": spec.unit,
        "OBS_STATUS": cell.obs_status,
        "CONF_STATUS": cell.conf_status,
        "NB_DEVICES": cell.devices_reporting,
        "COMPLETENESS": cell.completeness,
        "DECIMALS": places,
    }


def to_sdmx_csv(
    cells: Sequence[StatisticsCell],
    spec: MetricSpec,
    structure: Schema | None = None,
    codes: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """SDMX-CSV 1.0 text of ``cells`` of metric ``spec``.

    With ``structure`` (the current dataflow's, :func:`api.sdmx.structures.schema`) the rows follow
    its components and ``codes`` (dimension -> store value -> code id) maps store values to codes.
    """
    rows: list[dict[str, object]] = []
    places = decimals_of(spec.unit)
    known = codes or {}

    def code(dim: str, value: str | None) -> str:
        if value is None:
            return UNKNOWN
        return known.get(dim, {}).get(value, value)

    for cell in cells:
        for stat in statistics_of(spec):
            rows.append(
                {
                    "FREQ": "M",
                    "REF_AREA": code("REF_AREA", cell.district),
                    "DOMAIN": code("DOMAIN", cell.domain),
                    "PROVENANCE": code("PROVENANCE", cell.provenance),
                    "INDICATOR": code("INDICATOR", spec.name),
                    **observation(cell, spec, stat, places),
                }
            )
    used = structure or schema()
    columns = [c.id for c in used.components]
    frame = pd.DataFrame(rows, columns=columns)
    text = write([PandasDataset(structure=used, data=frame)])
    assert text is not None  # noqa: S101 - no output path: pysdmx returns the text
    return text
