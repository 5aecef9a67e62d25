"""Monthly statistics without I/O: month ranges, completeness, disclosure control and cell shaping.

Completeness of a cell (a month and one value of each requested breakdown) for metric ``m``::

    expected = sum, over the cell's *expected devices*, of
               seconds from max(month start, registered_at) to min(month end, now) / expected_interval_s
    received = readings of ``m`` from those same devices in that month (monthly rollups)
    completeness = received / expected        (null when expected is 0; may exceed 1 if a device
                                               reports more often than registered)

A device is *expected* to report ``m`` in a month when its domain is one of ``m``'s catalogue domains
(any domain if the catalogue lists none), it has an ``expected_interval_s``, its status is not
``inactive``, and it was registered before the end of the month (and before now). Devices without an
interval cannot be held to a schedule: they count towards the figures when they report but not towards
completeness. ``devices_without_interval`` counts the devices without an interval that would be
expected if they had one, whether they reported or not (a silent one is the worst case for coverage),
plus any other device without an interval that reported the metric that month.

Statistical disclosure control: a cell with fewer than ``k`` reporting devices loses its values (mean,
min, max, total consumption) and every count from which a value could be rebuilt with a published
total (readings, flagged, readings received and completeness), with status ``Q`` (SDMX OBS_STATUS
"missing value; suppressed"); it keeps its device counts and readings expected, which come from the
registry, not from the readings. A cell where no device reported has status ``O`` (missing value).
Others ``A`` (``P``, provisional, while their month has not been released).

Secondary suppression (:func:`secondary_suppression`) protects the primary cells from subtraction:
within one table (a metric, a month, a breakdown), every *line* of cells that share all breakdown
values but one adds up to a published marginal (for one breakdown, all the month's cells add up to the
total). A line with exactly one suppressed cell would give it away, so the published cell of that line
with the fewest reporting devices (ties: the lowest key) is suppressed too, with ``conf_status`` ``D``;
cells where no device reported (``O``) are zeros and protect nothing. This repeats until no line has a
single suppressed cell. It runs on the whole table, before any filter, so a filter never changes what
is hidden.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime
from typing import Annotated, Any, Final, Literal, Protocol

from pydantic import Field

from api.decimals import decimals_of, rounded
from core.catalogue import MetricSpec
from core.readings import TS_RANGE_TEXT

ObsStatus = Literal["A", "P", "Q", "O"]
"""SDMX CL_OBS_STATUS codes used: A normal, P provisional (not yet released), Q suppressed, O missing."""
ConfStatus = Literal["F", "C", "D"]
"""SDMX CL_CONF_STATUS codes used: F free, C confidential (primary), D secondary confidentiality."""
TOTAL: Final = "_T"
"""Value of a breakdown the caller did not ask for (SDMX: total)."""
COMPLETENESS_RULE: Final = (
    "completeness = readings_received / readings_expected; readings_expected sums, over devices whose "
    "domain is one of the metric's catalogue domains, that have an expected_interval_s, are not inactive "
    "and were registered before the month's end, the seconds from max(month start, registered_at) to "
    "min(month end, now) divided by expected_interval_s; readings_received counts those devices' readings. "
    "devices_without_interval counts the devices without an expected_interval_s that meet the other "
    "conditions, whether they reported or not, and any other device without one that reported the metric "
    "that month; they count towards no completeness figure. Suppressed cells (obs_status Q) publish no "
    "readings, flagged, readings_received or completeness."
)
"""The completeness rule as each statistics response and release states it."""
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def parse_month(text: str) -> date:
    """``YYYY-MM`` -> the first day of that month; ValueError otherwise."""
    match = _MONTH.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a month: write YYYY-MM, e.g. 2024-03")
    year = int(match.group(1))
    if not 1970 <= year < 3000:
        raise ValueError(f"{text!r} is outside 1970-01..2999-12, the months of readings ({TS_RANGE_TEXT})")
    return date(year, int(match.group(2)), 1)


def next_month(month: date) -> date:
    """The first day of the month after ``month``."""
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def month_range(start: date, end: date, max_months: int) -> list[tuple[datetime, datetime]]:
    """``(start, end)`` UTC instants of each month from ``start`` to ``end`` inclusive."""
    if end < start:
        raise ValueError(f"end {end:%Y-%m} is before start {start:%Y-%m}: swap them")
    months: list[tuple[datetime, datetime]] = []
    month = start
    while month <= end:
        if len(months) == max_months:
            raise ValueError(f"{start:%Y-%m}..{end:%Y-%m} spans more than {max_months} months: split it")
        following = next_month(month)
        months.append((_instant(month), _instant(following)))
        month = following
    return months


def _instant(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def completeness(received: int, expected: float) -> float | None:
    """``received / expected``, or None when nothing was expected."""
    return received / expected if expected > 0 else None


def obs_status(devices_reporting: int, k: int) -> ObsStatus:
    """A normal, Q suppressed (fewer than ``k`` devices), O no data."""
    if devices_reporting == 0:
        return "O"
    return "Q" if devices_reporting < k else "A"


_SUPPRESSED_NULL: Final = "Null when suppressed."


@dataclass(frozen=True, slots=True)
class StatisticsCell:
    """One cell: a month and one value of each breakdown (`_T` = not broken down, null = unknown)."""

    # The one definition of a cell: the route serves it as it is (its JSON schema is the OpenAPI one),
    # and the CSV and SDMX exports read it. A slots dataclass, not a pydantic model: built once per cell.
    period: str
    district: str | None
    domain: str | None
    provenance: str | None
    devices_reporting: int
    readings: Annotated[int | None, Field(description=_SUPPRESSED_NULL)]
    mean: float | None
    min: float | None
    max: float | None
    total_consumption: Annotated[float | None, Field(description="Counters only: sum of increases.")]
    flagged: Annotated[int | None, Field(description=_SUPPRESSED_NULL)]
    devices_expected: int
    readings_expected: float
    readings_received: Annotated[int | None, Field(description=_SUPPRESSED_NULL)]
    completeness: Annotated[
        float | None, Field(description="Null when suppressed or when nothing was expected.")
    ]
    devices_without_interval: int
    obs_status: Annotated[
        ObsStatus,
        Field(description="A normal (released), P provisional (not yet released), Q suppressed, O no data."),
    ]
    suppressed: bool
    """Whether disclosure control removed this cell's values (obs_status Q)."""
    conf_status: Annotated[
        ConfStatus,
        Field(description="F free, C suppressed (< k devices), D suppressed to protect another cell."),
    ] = "F"
    release: Annotated[
        int | None, Field(description="The release that published this cell; null while provisional.")
    ] = None


CELL_VALUES: Final = tuple(
    f.name
    for f in fields(StatisticsCell)
    if f.name not in ("period", "district", "domain", "provenance", "release")
)
"""A cell's fields besides its key and its release: what a release stores of it, in the cell's order."""


class Row(Protocol):
    """An aggregated row read by key: a dict, or the asyncpg Record itself (no copy into a dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


def shape_cell(row: Row, spec: MetricSpec, by: Sequence[str], k: int) -> StatisticsCell:
    """A :class:`StatisticsCell` from one aggregated row (keys as in ``api.report_queries``), suppressed
    as needed.

    Values are rounded to the decimals of the metric's unit (:mod:`api.decimals`).
    """
    reporting = int(row["devices_reporting"] or 0)
    readings = int(row["readings"] or 0)
    status = obs_status(reporting, k)
    publish = status == "A"
    # A suppressed cell's readings count, with its partners' and the published total, rebuilds its mean.
    hidden = status == "Q"
    places = decimals_of(spec.unit)
    total = row["total"]
    expected = float(row["expected"] or 0.0)
    received = int(row["received"] or 0)
    # Not strftime, which takes three times as long: this runs once per cell.
    period = row["period"].astimezone(UTC)
    return StatisticsCell(
        period=f"{period.year:04d}-{period.month:02d}",
        district=row["district"] if "district" in by else TOTAL,
        domain=row["domain"] if "domain" in by else TOTAL,
        provenance=row["provenance"] if "provenance" in by else TOTAL,
        devices_reporting=reporting,
        readings=None if hidden else readings,
        mean=rounded(total / readings, places) if publish and readings else None,
        min=rounded(row["min"], places) if publish else None,
        max=rounded(row["max"], places) if publish else None,
        total_consumption=rounded(row["increase"] or 0.0, places)
        if publish and spec.kind == "counter"
        else None,
        flagged=None if hidden else int(row["flagged"] or 0),
        devices_expected=int(row["devices_expected"] or 0),
        readings_expected=expected,
        readings_received=None if hidden else received,
        completeness=None if hidden else completeness(received, expected),
        devices_without_interval=int(row["devices_without_interval"] or 0),
        obs_status=status,
        suppressed=hidden,
        conf_status="C" if hidden else "F",
    )


def missing_metrics(
    domains: Sequence[str], reported: Sequence[str], specs: Sequence[MetricSpec]
) -> list[str]:
    """Catalogue metrics a district's registered devices could report (by domain) but none did."""
    got = set(reported)
    wanted = {s.name for s in specs if any(d in s.domains for d in domains) or (not s.domains and domains)}
    return sorted(wanted - got)


def _key(cell: StatisticsCell) -> tuple[str, str, str]:
    # The live query's order: null (unknown) sorts as the empty string.
    return (cell.district or "", cell.domain or "", cell.provenance or "")


def suppressed_secondarily(cell: StatisticsCell) -> StatisticsCell:
    """``cell`` suppressed to protect another: the same fields hidden as for primary suppression."""
    return replace(
        cell,
        readings=None,
        mean=None,
        min=None,
        max=None,
        total_consumption=None,
        flagged=None,
        readings_received=None,
        completeness=None,
        obs_status="Q",
        suppressed=True,
        conf_status="D",
    )


def secondary_suppression(cells: Sequence[StatisticsCell], by: Sequence[str]) -> list[StatisticsCell]:
    """``cells`` (whole tables of one metric: any months, one breakdown ``by``) with secondary
    suppression applied; the order is kept. See the module docstring for the rule."""
    out = list(cells)
    dims = [d for d in ("district", "domain", "provenance") if d in by]
    if not dims:
        return out  # one cell per month: its marginal is itself
    lines: dict[tuple[object, ...], list[int]] = {}
    for i, cell in enumerate(out):
        for free in dims:
            fixed = tuple(getattr(cell, d) for d in dims if d != free)
            lines.setdefault((cell.period, free, *fixed), []).append(i)
    changed = True
    while changed:
        changed = False
        for members in lines.values():
            hidden = [i for i in members if out[i].suppressed]
            if len(hidden) != 1:
                continue
            open_ = [i for i in members if not out[i].suppressed and out[i].obs_status != "O"]
            if not open_:
                continue
            pick = min(open_, key=lambda i: (out[i].devices_reporting, _key(out[i])))
            out[pick] = suppressed_secondarily(out[pick])
            changed = True
    return out


def provisional(cell: StatisticsCell) -> StatisticsCell:
    """``cell`` as served before its month is released: status ``A`` becomes ``P``."""
    return replace(cell, obs_status="P") if cell.obs_status == "A" else cell
