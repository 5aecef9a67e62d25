"""``/v1/series``: one device's metric over time, raw or from the hourly, daily or monthly rollups."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api import queries
from api.auth import Principal, Scope, require
from api.deps import CatalogueDep, CursorsDep, PoolDep, SettingsDep, metric_spec, time_range
from api.pagination import Cursor, Limit, Page, cursor_time
from api.problems import Problem
from core.types import FLAGGED_MASK, MAX_DEVICE_ID_LENGTH

router = APIRouter(prefix="/v1", tags=["series"])
# Same rule as the rollups' ``flagged``: out of range or no device time; a unit conversion is no flaw.
Reader = Annotated[Principal, Depends(require(Scope.METRICS_READ))]
Bucket = Literal["raw", "1h", "1d", "1mo"]


class Point(BaseModel):
    """One bucket (or, for ``raw``, one reading: count 1 and mean = min = max = sum = the value)."""

    time: datetime = Field(description="Bucket start (UTC), or the reading's time for raw.")
    count: int
    mean: float
    min: float
    max: float
    sum: float
    increase: float | None = Field(
        description="Counters: consumption in the bucket; null for gauges and raw."
    )
    flagged: int = Field(description="Readings flagged out of range or without a device timestamp.")


class SeriesPage(Page[Point]):
    """A page of one device's series."""

    device_id: str
    metric: str
    unit: str
    kind: str
    bucket: Bucket


def _point(row: Any) -> Point:
    count = int(row["count"])
    return Point(
        time=row["bucket"],
        count=count,
        mean=row["sum"] / count,
        min=row["min"],
        max=row["max"],
        sum=row["sum"],
        increase=row["increase"],
        flagged=int(row["flagged"]),
    )


def _raw_point(row: Any) -> Point:
    value = float(row["value"])
    flagged = 1 if int(row["flags"]) & FLAGGED_MASK else 0
    return Point(
        time=row["ts"], count=1, mean=value, min=value, max=value, sum=value, increase=None, flagged=flagged
    )


@router.get("/series")
async def series(
    pool: PoolDep,
    settings: SettingsDep,
    catalogue: CatalogueDep,
    cursors: CursorsDep,
    _: Reader,
    device_id: Annotated[str, Query(min_length=1, max_length=MAX_DEVICE_ID_LENGTH)],
    metric: Annotated[str, Query(min_length=1, max_length=200)],
    start: Annotated[datetime, Query(description="RFC 3339, inclusive.")],
    end: Annotated[datetime, Query(description="RFC 3339, exclusive.")],
    bucket: Bucket = "1h",
    limit: Limit = 1000,
    cursor: Cursor = None,
) -> SeriesPage:
    """Points of one device and metric whose bucket starts in [start, end), oldest first."""
    spec = metric_spec(catalogue, metric)
    lo, hi = time_range(start, end)
    if await queries.get_device(pool, device_id) is None:
        raise Problem(404, "Unknown device", f"no device {device_id!r}; list devices with GET /v1/devices")
    after = cursor_time(cursors.decode("series", cursor, 1)[0], "series") if cursor else None
    if bucket == "raw":
        widest = timedelta(days=settings.raw_max_range_days)
        if hi - lo > widest:
            raise Problem(
                400,
                "Raw range too wide",
                f"bucket=raw serves at most {settings.raw_max_range_days:g} days per request, this range "
                f"spans {(hi - lo).total_seconds() / 86400:.1f}; narrow start/end or use bucket=1h",
                parameter="end",
            )
        rows = await queries.raw_series(pool, device_id, metric, lo, hi, after, limit + 1)
        points = [_raw_point(r) for r in rows]
    else:
        rows = await queries.series(pool, bucket, device_id, metric, lo, hi, after, limit + 1)
        points = [_point(r) for r in rows]
    page = cursors.page_of(points, limit, "series", lambda p: [p.time.isoformat()])
    return SeriesPage(
        items=page.items,
        next_cursor=page.next_cursor,
        device_id=device_id,
        metric=metric,
        unit=spec.unit,
        kind=spec.kind,
        bucket=bucket,
    )
