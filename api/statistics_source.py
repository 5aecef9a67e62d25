"""Where monthly statistics cells come from: a published release, or live figures marked provisional.

The one path every statistics reader takes (``/v1/statistics/monthly``, the SDMX data API):
:func:`load_cells` for the cells, :func:`release_info` / :func:`list_releases` for what a release
published with them (its time, note, months, suppression k, completeness rule and metric units).

Views (:class:`View`):

- ``release=N``: the cells release N published for those months, byte for byte, forever; a month N does
  not hold is :class:`NotReleased`.
- ``as_of=T``: each month from the latest release published at or before T that holds it;
  :class:`NotReleased` if a month has none.
- neither: months that have a release come from their latest release; months never released are
  computed live (the statistics cache serves closed months), with secondary suppression on the whole
  table, and a normal status ``A`` becomes ``P`` (provisional). Their ``release`` is null.
- ``updated_after=T`` (with any of the above): only released cells that are new or revised in a
  release published after T (SDMX ``updatedAfter``). Provisional cells are never included: the store's
  per-month change counters (migration 0009) say *that* a month changed, not *when*, so whether a live
  cell changed after T cannot be told.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson

from api import release_queries, report_queries
from api.queries import GROUP_COLUMNS, GroupColumn, Pool, Record
from api.revisions import by_columns
from api.settings import ApiSettings
from api.statistics import StatisticsCell, provisional, secondary_suppression, shape_cell
from api.statistics_cache import StatisticsCache
from core.catalogue import MetricSpec


class NotReleased(LookupError):
    """A release (or an ``as_of`` time) that does not hold every month asked for."""


@dataclass(frozen=True, slots=True)
class View:
    """Which figures to read: one release, the releases as of a time, or the current ones (default)."""

    release: int | None = None
    as_of: datetime | None = None
    updated_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    """A published release and what is needed to render its bodies again."""

    release: int
    published_at: datetime
    note: str
    months: list[str]
    """``YYYY-MM``, ascending."""
    metrics: list[str]
    suppression_k: int
    completeness_rule: str
    specs: dict[str, dict[str, Any]]
    """Per metric, as published: ``unit``, ``kind``, ``domains``, ``description``."""
    metadata: dict[str, Any]
    """Reference metadata (NQAF headings), see :mod:`api.releases`."""
    key_id: str
    cells: int
    revisions: int

    def spec(self, metric: str) -> MetricSpec:
        """The catalogue entry of ``metric`` as this release published it (KeyError if it has none)."""
        s = self.specs[metric]
        return MetricSpec(metric, s["unit"], s["kind"], None, None, tuple(s["domains"]), s["description"])


def _info(row: Record) -> ReleaseInfo:
    return ReleaseInfo(
        release=row["release"],
        published_at=row["published_at"],
        note=row["note"],
        months=[f"{m.year:04d}-{m.month:02d}" for m in row["months"]],
        metrics=list(row["metrics"]),
        suppression_k=row["suppression_k"],
        completeness_rule=row["completeness_rule"],
        specs=orjson.loads(row["specs"]),
        metadata=orjson.loads(row["metadata"]),
        key_id=row["key_id"],
        cells=row["cells"],
        revisions=row["revisions"],
    )


async def release_info(pool: Pool, release: int) -> ReleaseInfo | None:
    """Release ``release``, or None if there is none of that number."""
    row = await release_queries.get_release(pool, release)
    return None if row is None else _info(row)


async def list_releases(pool: Pool, after: int = 0, limit: int = 1000) -> list[ReleaseInfo]:
    """Releases numbered after ``after``, ascending, at most ``limit``."""
    return [_info(r) for r in await release_queries.list_releases(pool, after, limit)]


def table_of(by: Sequence[str], filters: Sequence[str | None]) -> tuple[GroupColumn, ...]:
    """The breakdown of the table a request reads: ``by`` plus every filtered dimension."""
    return tuple(c for c, f in zip(GROUP_COLUMNS, filters, strict=True) if c in by or f is not None)


def _matches(cell: StatisticsCell, filters: Sequence[str | None]) -> bool:
    district, domain, provenance = filters
    return (
        (district is None or cell.district == district)
        and (domain is None or cell.domain == domain)
        and (provenance is None or cell.provenance == provenance)
    )


def _period(month: tuple[datetime, datetime]) -> date:
    return month[0].astimezone(UTC).date()


async def load_cells(
    pool: Pool,
    settings: ApiSettings,
    cache: StatisticsCache,
    spec: MetricSpec,
    months: Sequence[tuple[datetime, datetime]],
    by: Sequence[str],
    filters: Sequence[str | None],
    view: View,
    *,
    partial: bool = False,
) -> list[StatisticsCell]:
    """The cells of ``spec``'s metric for ``months`` (UTC month ranges, ascending) broken down by ``by``
    (any of district, domain, provenance), as ``view`` sees them (module docstring).

    ``filters`` is ``[district, domain, provenance]`` (None = all). A filter selects cells of the table
    broken down by ``by`` *and* the filtered dimensions (so a filtered dimension carries its value, not
    ``_T``), whose suppression was decided on the whole table: filtering never changes what is hidden.
    Cells come by month, then in their table's order (the live query's, which a release stores).
    Raises :class:`NotReleased` when ``view`` names a release or time that lacks one of the months (with
    ``partial``, those months are left out instead: SDMX answers for the months a release holds within
    the period asked for), and ValueError when it names both a release and a time.
    """
    if view.release is not None and view.as_of is not None:
        raise ValueError("a view names a release or a time, not both")
    table = table_of(by, filters)
    text = by_columns(table)
    periods = [_period(m) for m in months]
    if view.release is not None or view.as_of is not None:
        chosen = await release_queries.releases_of(pool, spec.name, periods, view.release, view.as_of)
        missing = [f"{p:%Y-%m}" for p in periods if p not in chosen]
        if missing and not partial:
            which = f"release {view.release}" if view.release is not None else "no release published by then"
            raise NotReleased(f"{which} does not hold {spec.name} of {', '.join(missing)}")
        if not chosen:
            return []
        return await release_queries.released_cells(
            pool, spec.name, text, chosen, filters, view.updated_after
        )
    chosen = await release_queries.releases_of(pool, spec.name, periods, None, None)
    released = (
        await release_queries.released_cells(pool, spec.name, text, chosen, filters, view.updated_after)
        if chosen
        else []
    )
    live_months = [m for m in months if _period(m) not in chosen]
    if not live_months or view.updated_after is not None:
        return released
    rows = await report_queries.monthly_statistics(
        pool, spec.name, live_months, datetime.now(UTC), spec.domains, table, [None, None, None], cache
    )
    shaped = [shape_cell(r, spec, table, settings.suppression_k) for r in rows]
    live = [provisional(c) for c in secondary_suppression(shaped, table) if _matches(c, filters)]
    if not released:
        return live
    # Both lists are in month order; a stable sort on the month keeps each table's own order.
    return sorted([*released, *live], key=lambda c: c.period)
