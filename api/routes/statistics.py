"""``/v1/statistics/monthly``: monthly figures for statisticians as JSON, CSV or SDMX-CSV."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import Field

from api.auth import Principal, Scope, require
from api.decimals import decimals_of
from api.deps import CatalogueDep, CursorsDep, PoolDep, SettingsDep, StatisticsCacheDep, metric_spec, utc
from api.export import to_csv
from api.pagination import Cursor, Limit, Page
from api.problems import Problem
from api.queries import Pool
from api.routes.aggregates import parse_group_by
from api.sdmx import structures as sdmx_structures
from api.sdmx import to_sdmx_csv
from api.statistics import COMPLETENESS_RULE, StatisticsCell, month_range, parse_month
from api.statistics_source import NotReleased, ReleaseInfo, View, load_cells, release_info
from core.types import Provenance

router = APIRouter(prefix="/v1/statistics", tags=["statistics"])
Reader = Annotated[Principal, Depends(require(Scope.STATISTICS_READ))]
Month = Annotated[str, Query(min_length=7, max_length=7, description="YYYY-MM (UTC calendar month).")]


class StatisticsPage(Page[StatisticsCell]):
    """A page of monthly statistics of one metric."""

    metric: str
    unit: str
    decimals: int = Field(description="Decimals of mean, min, max and total_consumption (per unit).")
    kind: str
    by: list[str]
    suppression_k: int
    completeness_rule: str


_CELL_FIELDS = tuple(f.name for f in fields(StatisticsCell))


def _item(cell: StatisticsCell) -> dict[str, Any]:
    # The body is encoded straight from the cells: FastAPI would validate each against the response
    # model, which cost more than the encoding.
    return {name: getattr(cell, name) for name in _CELL_FIELDS}


@router.get(
    "/monthly",
    # Documents the JSON body; the route returns a Response, which FastAPI passes through unvalidated.
    response_model=StatisticsPage,
    responses={
        200: {"content": {"text/csv": {}, "application/vnd.sdmx.data+csv; version=1.0.0": {}}},
        404: {"description": "No such release, or a month the release (or `asOf`) does not hold."},
    },
)
async def monthly(
    request: Request,
    pool: PoolDep,
    settings: SettingsDep,
    catalogue: CatalogueDep,
    cache: StatisticsCacheDep,
    cursors: CursorsDep,
    _: Reader,
    metric: Annotated[str, Query(min_length=1, max_length=200)],
    start: Month,
    end: Month,
    by: Annotated[str | None, Query(max_length=100, description="district,domain,provenance")] = None,
    district: Annotated[str | None, Query(max_length=100)] = None,
    domain: Annotated[str | None, Query(max_length=100)] = None,
    provenance: Provenance | None = None,
    format: Literal["json", "csv", "sdmx-csv"] = "json",
    limit: Limit = 1000,
    cursor: Cursor = None,
    release: Annotated[
        int | None,
        Query(
            ge=1,
            le=2_147_483_647,
            description="Serve what this release published (404 for a month it does not hold).",
        ),
    ] = None,
    as_of: Annotated[
        datetime | None,
        Query(
            alias="asOf",
            description="RFC 3339 time: each month from the latest release published "
            "by then (404 if none). Not with `release`.",
        ),
    ] = None,
) -> Response:
    """Monthly cells of ``metric`` from ``start`` to ``end`` (inclusive), small cells suppressed.

    Released months come from their latest release (or the one named by ``release`` / ``asOf``),
    months never released are computed now and marked provisional (``obs_status`` P). JSON is paged;
    CSV and SDMX-CSV are the whole table in one file.
    """
    spec = metric_spec(catalogue, metric)
    try:
        months = month_range(parse_month(start), parse_month(end), settings.max_months)
    except ValueError as exc:
        raise Problem(400, "Bad month range", str(exc), parameter="start") from None
    groups = parse_group_by(by)
    view = _view(release, as_of)
    info = await _release(pool, release) if release is not None else None
    try:
        cells = await load_cells(
            pool, settings, cache, spec, months, tuple(groups), [district, domain, provenance], view
        )
    except NotReleased as exc:
        raise Problem(404, "Not released", f"{exc}; list the releases at /v1/statistics/releases") from None
    if info is None:
        # Every cell from one release (as of a time, or the latest of each month): render as it did.
        published = {c.release for c in cells}
        if cells and None not in published:
            info = await _release(pool, max(r for r in published if r is not None))
    k, rule = settings.suppression_k, COMPLETENESS_RULE
    if info is not None and metric in info.specs:
        spec, k, rule = info.spec(metric), info.suppression_k, info.completeness_rule
    if format == "csv":
        return Response(
            to_csv(cells), media_type="text/csv; charset=utf-8", headers=_attachment(metric, "csv")
        )
    if format == "sdmx-csv":
        snapshot = await request.app.state.sdmx_structures.current(pool)
        if info is not None:
            snapshot = snapshot.at(info.published_at)
        return Response(
            to_sdmx_csv(
                cells, spec, sdmx_structures.schema(snapshot.flow, snapshot.versions), snapshot.codes
            ),
            media_type="application/vnd.sdmx.data+csv; version=1.0.0; charset=utf-8",
            headers=_attachment(metric, "sdmx.csv"),
        )
    start_at = 0
    if cursor:
        start_at = _resume(cursors.decode("statistics", cursor, 1)[0], len(cells))
    end_at = start_at + limit
    body = {
        "items": [_item(c) for c in cells[start_at:end_at]],
        "next_cursor": cursors.encode("statistics", [end_at]) if end_at < len(cells) else None,
        "metric": metric,
        "unit": spec.unit,
        "decimals": decimals_of(spec.unit),
        "kind": spec.kind,
        "by": list(groups),
        "suppression_k": k,
        "completeness_rule": rule,
    }
    return Response(orjson.dumps(body), media_type="application/json")


def _view(release: int | None, as_of: datetime | None) -> View:
    if release is not None and as_of is not None:
        raise Problem(
            400, "Release and asOf together", "pass `release` or `asOf`, not both", parameter="asOf"
        )
    return View(release=release, as_of=utc(as_of, "asOf") if as_of is not None else None)


async def _release(pool: Pool, number: int) -> ReleaseInfo:
    info = await release_info(pool, number)
    if info is None:
        raise Problem(
            404,
            "Unknown release",
            f"there is no release {number}; list them at /v1/statistics/releases",
            parameter="release",
        )
    return info


def _resume(position: object, total: int) -> int:
    # The table is computed whole (it is small: months x groups), so the key is the position.
    if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position <= total:
        raise Problem(400, "Invalid cursor", "pass the `next_cursor` of the previous page unchanged")
    return position


def _attachment(metric: str, ext: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{metric}-monthly.{ext}"'}
