"""Publishing a release: freeze every table of the named closed months, record revisions and metadata.

:func:`publish` takes the release lock (releases are made one at a time, numbered without gaps), reads
every table (each metric, each of the 8 breakdowns, the months named) in one repeatable-read snapshot,
exactly as the live statistics compute them (:func:`api.report_queries.statistics_rows`,
:func:`api.statistics.shape_cell`, :func:`api.statistics.secondary_suppression`), compares each month
that was released before with its latest release (:mod:`api.revisions`), builds the reference metadata,
and stores it all in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any, Final

import orjson

from api import release_queries, report_queries
from api.decimals import decimals_of
from api.queries import GroupColumn, Pool
from api.revisions import CellKey, by_columns, revisions
from api.settings import ApiSettings
from api.statistics import (
    COMPLETENESS_RULE,
    StatisticsCell,
    next_month,
    secondary_suppression,
    shape_cell,
)
from api.statistics_source import ReleaseInfo, release_info
from core.catalogue import Catalogue

COMBINATIONS: Final[tuple[tuple[GroupColumn, ...], ...]] = (
    (),
    ("district",),
    ("domain",),
    ("provenance",),
    ("district", "domain"),
    ("district", "provenance"),
    ("domain", "provenance"),
    ("district", "domain", "provenance"),
)
"""Every breakdown a release stores, each as a whole table."""

ROLLUPS: Final = {
    "mean": "sum of the readings of the cell's devices in the month divided by their number (each "
    "reading weighs the same)",
    "min": "smallest reading of the cell's devices in the month",
    "max": "largest reading of the cell's devices in the month",
    "total_consumption": "counters only: sum over the cell's devices of each reading's increase over "
    "the device's previous reading (a drop counts as a meter restart from zero; the first reading adds "
    "nothing), so late readings never count consumption twice",
    "rounding": "mean, min, max and total_consumption are rounded half-to-even to the decimals of "
    "the metric's unit",
}
PRIMARY_RULE: Final = (
    "a cell with fewer than k reporting devices is suppressed (obs_status Q, conf_status C): it "
    "publishes no mean, min, max, total_consumption, readings, flagged, readings_received or "
    "completeness; a cell where no device reported has obs_status O"
)
SECONDARY_RULE: Final = (
    "within each table (one metric, one month, one breakdown), every line of cells that share all "
    "breakdown values but one adds up to a published marginal; a line with exactly one suppressed cell "
    "gets its published cell with the fewest reporting devices (ties: lowest key; cells with obs_status "
    "O excluded) suppressed too (obs_status Q, conf_status D), repeated until no line has exactly one"
)
REVISIONS_POLICY: Final = (
    "Releases are immutable: a release's cells, metadata and bodies never change and stay retrievable "
    "with release=N or asOf. A month may be released again; the new release then records, per cell and "
    "published field, the old value, the new value and the cause (registry, late_readings, correction, "
    "disclosure) in the revision log (GET /v1/statistics/revisions). Figures of months not yet "
    "released are provisional (obs_status P) and may change without a revision."
)


class MonthNotClosed(ValueError):
    """A month that has not ended yet cannot be released."""


def _instant(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _json(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


async def publish(
    pool: Pool,
    settings: ApiSettings,
    catalogue: Catalogue,
    months: Sequence[date],
    metrics: Sequence[str],
    note: str,
    key_id: str,
) -> ReleaseInfo:
    """Publish ``metrics`` (catalogue names) of ``months`` (first days, closed) as the next release."""
    async with pool.acquire() as conn:
        await release_queries.lock_releases(conn)
        try:
            number = await _publish_locked(
                conn, settings, catalogue, sorted(set(months)), sorted(set(metrics)), note, key_id
            )
        finally:
            # Given back at once for the next publisher (if this is cancelled, the pool's reset of the
            # connection, pg_advisory_unlock_all, gives it back).
            await release_queries.unlock_releases(conn)
    info = await release_info(pool, number)
    assert info is not None  # noqa: S101 - committed above
    return info


async def _publish_locked(
    conn: release_queries.Connection,
    settings: ApiSettings,
    catalogue: Catalogue,
    months: list[date],
    metrics: list[str],
    note: str,
    key_id: str,
) -> int:
    k = settings.suppression_k
    # Repeatable read: every table, the previous releases and the metadata come from one snapshot,
    # taken after the lock, so it holds every earlier release.
    async with conn.transaction(isolation="repeatable_read"):
        number, published_at = await release_queries.next_release(conn)
        ranges = [(_instant(m), _instant(next_month(m))) for m in months]
        open_ = [f"{m:%Y-%m}" for m, (_, end) in zip(months, ranges, strict=True) if end > published_at]
        if open_:
            raise MonthNotClosed(f"{', '.join(open_)} has not ended yet")
        cells: list[tuple[Any, ...]] = []
        revised: list[tuple[Any, ...]] = []
        contents = [(number, metric, m) for metric in metrics for m in months]
        for metric in metrics:
            spec = catalogue[metric]
            new: dict[CellKey, StatisticsCell] = {}
            for by in COMBINATIONS:
                rows = await report_queries.statistics_rows(
                    conn, metric, ranges, published_at, spec.domains, by
                )
                text = by_columns(by)
                table = secondary_suppression([shape_cell(r, spec, by, k) for r in rows], by)
                ordinal: dict[str, int] = {}
                for cell in table:
                    position = ordinal[cell.period] = ordinal.get(cell.period, -1) + 1
                    new[(text, cell.period, cell.district, cell.domain, cell.provenance)] = cell
                    cells.append(_cell_record(number, metric, text, cell, position))
            previous = await release_queries.releases_of(conn, metric, months, None, None)
            if previous:
                revised += await _revisions(conn, number, metric, previous, new)
        metadata = await _metadata(conn, number, published_at, catalogue, metrics, ranges, k)
        specs = {
            m: {
                "unit": catalogue[m].unit,
                "kind": catalogue[m].kind,
                "domains": list(catalogue[m].domains),
                "description": catalogue[m].description,
            }
            for m in metrics
        }
        release = {
            "release": number,
            "published_at": published_at,
            "note": note,
            "months": months,
            "metrics": metrics,
            "suppression_k": k,
            "completeness_rule": COMPLETENESS_RULE,
            "specs": orjson.dumps(specs).decode(),
            "metadata": orjson.dumps(metadata).decode(),
            "key_id": key_id,
            "cells": len(cells),
            "revisions": len(revised),
        }
        await release_queries.insert_release(conn, release, contents, cells, revised)
    return number


def _cell_record(release: int, metric: str, by: str, cell: StatisticsCell, ordinal: int) -> tuple[Any, ...]:
    year, month = cell.period.split("-")
    return (
        release,
        metric,
        by,
        date(int(year), int(month), 1),
        release_queries.stored_key(cell.district),
        release_queries.stored_key(cell.domain),
        release_queries.stored_key(cell.provenance),
        ordinal,
        *(getattr(cell, name) for name in release_queries.CELL_COLUMNS),
    )


async def _revisions(
    conn: release_queries.Connection,
    number: int,
    metric: str,
    previous: dict[date, int],
    new: dict[CellKey, StatisticsCell],
) -> list[tuple[Any, ...]]:
    old: dict[str, dict[CellKey, StatisticsCell]] = {}
    for r in await release_queries.previous_cells(conn, metric, previous):
        cell = release_queries.cell_of(r, r["release"])
        old.setdefault(cell.period, {})[
            (r["by_columns"], cell.period, cell.district, cell.domain, cell.provenance)
        ] = cell
    out: list[tuple[Any, ...]] = []
    for period, prior in previous.items():
        text = f"{period:%Y-%m}"
        fresh = {key: c for key, c in new.items() if key[1] == text}
        for rev in revisions(old.get(text, {}), fresh):
            out.append(
                (
                    number,
                    prior,
                    metric,
                    rev.by,
                    period,
                    release_queries.stored_key(rev.district),
                    release_queries.stored_key(rev.domain),
                    release_queries.stored_key(rev.provenance),
                    rev.field,
                    _json(rev.old),
                    _json(rev.new),
                    rev.cause,
                )
            )
    return out


async def _metadata(
    conn: release_queries.Connection,
    number: int,
    published_at: datetime,
    catalogue: Catalogue,
    metrics: list[str],
    ranges: list[tuple[datetime, datetime]],
    k: int,
) -> dict[str, Any]:
    """The reference metadata of a release, under the UN NQAF-style headings that apply."""
    gaps: dict[datetime, dict[str, list[str]]] = {
        start: {"districts": [], "domains": []} for start, _ in ranges
    }
    for r in await release_queries.coverage_gaps(conn, ranges):
        gaps[r["month_start"]]["districts" if r["kind"] == "district" else "domains"].append(r["value"])
    units = sorted({catalogue[m].unit for m in metrics})
    return {
        "release": number,
        "published_at": published_at.isoformat(),
        "source": {
            "description": "Readings of the city's registered sensors, as stored by cityingest's consumer "
            "in monthly rollups; devices are attributed to districts, domains and provenances by the "
            "device registry as it stood when the release was published.",
            "devices": [
                {
                    "provenance": r["provenance"],
                    "domain": r["domain"],
                    "active": r["active"],
                    "inactive": r["inactive"],
                    "unregistered": r["unregistered"],
                }
                for r in await release_queries.source_devices(conn)
            ],
        },
        "methods": {
            "rollups": ROLLUPS,
            "completeness_rule": COMPLETENESS_RULE,
            "suppression": {"k": k, "primary": PRIMARY_RULE, "secondary": SECONDARY_RULE},
            "metrics": [
                {
                    "metric": m,
                    "unit": catalogue[m].unit,
                    "kind": catalogue[m].kind,
                    "decimals": decimals_of(catalogue[m].unit),
                }
                for m in metrics
            ],
            "unit_conversions": [
                {"from": c.source, "to": c.target, "scale": c.scale, "offset": c.offset}
                for c in sorted(catalogue.conversions().values(), key=lambda c: (c.target, c.source))
                if c.target in units
            ],
        },
        "coverage": [
            {
                "month": f"{start:%Y-%m}",
                "districts_without_reporting_device": gaps[start]["districts"],
                "domains_without_reporting_device": gaps[start]["domains"],
            }
            for start, _ in ranges
        ],
        "timeliness": [
            {
                "month": f"{start:%Y-%m}",
                "month_end": end.isoformat(),
                "release_lag_days": round((published_at - end).total_seconds() / 86400, 3),
            }
            for start, end in ranges
        ],
        "revisions_policy": REVISIONS_POLICY,
    }
