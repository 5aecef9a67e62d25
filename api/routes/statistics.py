"""``/v1/statistics/monthly``: monthly figures for statisticians as JSON, CSV or SDMX-CSV."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import Field

from api import report_queries
from api.auth import Principal, Scope, require
from api.decimals import decimals_of
from api.deps import CatalogueDep, CursorsDep, PoolDep, SettingsDep, StatisticsCacheDep, metric_spec
from api.export import to_csv
from api.pagination import Cursor, Limit, Page
from api.problems import Problem
from api.routes.aggregates import parse_group_by
from api.sdmx import structures as sdmx_structures
from api.sdmx import to_sdmx_csv
from api.statistics import StatisticsCell, month_range, parse_month, shape_cell
from core.types import Provenance

router = APIRouter(prefix="/v1/statistics", tags=["statistics"])
Reader = Annotated[Principal, Depends(require(Scope.STATISTICS_READ))]
Month = Annotated[str, Query(min_length=7, max_length=7, description="YYYY-MM (UTC calendar month).")]

COMPLETENESS_RULE = (
    "completeness = readings_received / readings_expected; readings_expected sums, over devices whose "
    "domain is one of the metric's catalogue domains, that have an expected_interval_s, are not inactive "
    "and were registered before the month's end, the seconds from max(month start, registered_at) to "
    "min(month end, now) divided by expected_interval_s; readings_received counts those devices' readings. "
    "devices_without_interval counts the devices without an expected_interval_s that meet the other "
    "conditions, whether they reported or not, and any other device without one that reported the metric "
    "that month; they count towards no completeness figure. Suppressed cells (obs_status Q) publish no "
    "readings, flagged, readings_received or completeness."
)


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
    responses={200: {"content": {"text/csv": {}, "application/vnd.sdmx.data+csv; version=1.0.0": {}}}},
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
) -> Response:
    """Monthly cells of ``metric`` from ``start`` to ``end`` (inclusive), small cells suppressed.

    JSON is paged; CSV and SDMX-CSV are the whole table in one file.
    """
    spec = metric_spec(catalogue, metric)
    try:
        months = month_range(parse_month(start), parse_month(end), settings.max_months)
    except ValueError as exc:
        raise Problem(400, "Bad month range", str(exc), parameter="start") from None
    groups = parse_group_by(by)
    rows = await report_queries.monthly_statistics(
        pool,
        metric,
        months,
        datetime.now(UTC),
        spec.domains,
        groups,
        [district, domain, provenance],
        cache,
    )
    cells = [shape_cell(r, spec, groups, settings.suppression_k) for r in rows]
    if format == "csv":
        return Response(
            to_csv(cells), media_type="text/csv; charset=utf-8", headers=_attachment(metric, "csv")
        )
    if format == "sdmx-csv":
        snapshot = await request.app.state.sdmx_structures.current(pool)
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
        "suppression_k": settings.suppression_k,
        "completeness_rule": COMPLETENESS_RULE,
    }
    return Response(orjson.dumps(body), media_type="application/json")


def _resume(position: object, total: int) -> int:
    # The table is computed whole (it is small: months x groups), so the key is the position.
    if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position <= total:
        raise Problem(400, "Invalid cursor", "pass the `next_cursor` of the previous page unchanged")
    return position


def _attachment(metric: str, ext: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{metric}-monthly.{ext}"'}
