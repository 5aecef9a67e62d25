"""``/v1/aggregates``: city-level figures of one metric per bucket, grouped as asked."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api import queries
from api.auth import Principal, Scope, require
from api.deps import CatalogueDep, CursorsDep, PoolDep, metric_spec, time_range
from api.pagination import Cursor, Limit, Page, cursor_time
from api.problems import Problem
from api.statistics import TOTAL
from core.types import Provenance

router = APIRouter(prefix="/v1", tags=["aggregates"])
Reader = Annotated[Principal, Depends(require(Scope.METRICS_READ))]
GroupBy = Annotated[
    str | None,
    Query(
        max_length=100,
        description="Comma-separated breakdowns among district, domain, provenance; omit for city totals.",
    ),
]


class Aggregate(BaseModel):
    """One bucket of one group; a breakdown not asked for is `_T` (total), an unknown one null."""

    time: datetime = Field(description="Bucket start (UTC).")
    district: str | None
    domain: str | None
    provenance: str | None
    devices: int = Field(description="Devices with readings in the bucket.")
    count: int
    mean: float
    min: float
    max: float
    sum: float
    increase: float | None = Field(description="Counters: total consumption; null for gauges.")
    flagged: int


def parse_group_by(text: str | None) -> list[queries.GroupColumn]:
    """The validated breakdowns of a ``group_by``/``by`` parameter, in their canonical order."""
    asked = [part.strip() for part in (text or "").split(",") if part.strip()]
    unknown = [a for a in asked if a not in queries.GROUP_COLUMNS]
    if unknown:
        raise Problem(
            400,
            "Unknown breakdown",
            f"cannot group by {', '.join(repr(u) for u in unknown)}; use any of "
            f"{', '.join(queries.GROUP_COLUMNS)}, comma-separated",
        )
    return [c for c in queries.GROUP_COLUMNS if c in asked]


def _aggregate(row: Any, group_by: list[queries.GroupColumn]) -> Aggregate:
    count = int(row["count"])
    dims = {c: (row[c] if c in group_by else TOTAL) for c in queries.GROUP_COLUMNS}
    return Aggregate(
        time=row["bucket"],
        **dims,
        devices=int(row["devices"]),
        count=count,
        mean=row["sum"] / count,
        min=row["min"],
        max=row["max"],
        sum=row["sum"],
        increase=row["increase"],
        flagged=int(row["flagged"]),
    )


def _key(item: Aggregate) -> list[str | None]:
    dims = [item.district, item.domain, item.provenance]
    return [item.time.isoformat(), *[("" if d is None or d == TOTAL else d) for d in dims]]


@router.get("/aggregates")
async def aggregates(
    pool: PoolDep,
    catalogue: CatalogueDep,
    cursors: CursorsDep,
    _: Reader,
    metric: Annotated[str, Query(min_length=1, max_length=200)],
    start: Annotated[datetime, Query(description="RFC 3339, inclusive.")],
    end: Annotated[datetime, Query(description="RFC 3339, exclusive.")],
    bucket: Literal["1h", "1d", "1mo"] = "1d",
    group_by: GroupBy = None,
    district: Annotated[str | None, Query(max_length=100)] = None,
    domain: Annotated[str | None, Query(max_length=100)] = None,
    provenance: Provenance | None = None,
    limit: Limit = 1000,
    cursor: Cursor = None,
) -> Page[Aggregate]:
    """Figures of ``metric`` over every matching device, per bucket starting in [start, end) and group."""
    metric_spec(catalogue, metric)
    lo, hi = time_range(start, end)
    groups = parse_group_by(group_by)
    after: list[Any] | None = None
    if cursor:
        key = cursors.decode("aggregates", cursor, 4)
        after = [cursor_time(key[0], "aggregates"), *(str(k) for k in key[1:])]
    rows = await queries.aggregates(
        pool, bucket, groups, metric, lo, hi, [district, domain, provenance], after, limit + 1
    )
    return cursors.page_of([_aggregate(r, groups) for r in rows], limit, "aggregates", _key)
