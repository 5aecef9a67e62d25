"""``/v1/coverage``: per district, who is registered, who reports and which metrics have no data."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api import report_queries
from api.auth import Principal, Scope, require
from api.deps import CatalogueDep, CursorsDep, PoolDep, SettingsDep
from api.pagination import Cursor, Limit, Page
from api.problems import Problem
from api.statistics import completeness, missing_metrics, next_month, parse_month

router = APIRouter(prefix="/v1", tags=["coverage"])
Reader = Annotated[Principal, Depends(require(Scope.STATISTICS_READ))]

COVERAGE_RULE = (
    "registered = status active and registered before the month's end; completeness = readings_received / "
    "readings_expected over registered devices with an expected_interval_s, where a device owes "
    "(seconds registered in the month up to now) / expected_interval_s readings of each metric it "
    "reported that month (of one metric if it reported none); a district with fewer reporting devices "
    "than the statistics' suppression k publishes neither readings_received nor completeness"
)


class DistrictCoverage(BaseModel):
    """Coverage of one district (null = devices without a district) in one month."""

    district: str | None
    devices_registered: int
    devices_reporting: int = Field(description="Registered devices with at least one reading.")
    devices_silent: int = Field(description="Registered devices without any reading.")
    devices_unregistered_reporting: int = Field(description="Unregistered or inactive devices that reported.")
    devices_without_interval: int
    readings_expected: float
    readings_received: int | None = Field(
        description="Null when fewer devices than the suppression k reported (as its statistics cells)."
    )
    completeness: float | None = Field(description="Null when suppressed or when nothing was expected.")
    domains: list[str] = Field(description="Domains of the registered devices.")
    metrics_reported: list[str]
    metrics_without_data: list[str] = Field(
        description="Catalogue metrics of those domains that no device of the district reported."
    )


class CoveragePage(Page[DistrictCoverage]):
    """Coverage per district."""

    month: str
    domain: str | None
    coverage_rule: str


def _district(row: Any, specs: list[Any], k: int) -> DistrictCoverage:
    registered = int(row["devices_registered"])
    reporting = int(row["devices_reporting"])
    # A district's readings count is what lets a suppressed statistics cell's mean be rebuilt from a
    # published total (api.statistics): hide it exactly where the statistics hide it.
    hidden = 0 < reporting < k
    domains = sorted(row["domains"])
    reported = list(row["metrics_reported"])
    return DistrictCoverage(
        district=row["district"],
        devices_registered=registered,
        devices_reporting=reporting,
        devices_silent=registered - reporting,
        devices_unregistered_reporting=int(row["devices_unregistered_reporting"]),
        devices_without_interval=int(row["devices_without_interval"]),
        readings_expected=float(row["expected"]),
        readings_received=None if hidden else int(row["received"]),
        completeness=None if hidden else completeness(int(row["received"]), float(row["expected"])),
        domains=domains,
        metrics_reported=reported,
        metrics_without_data=missing_metrics(domains, reported, specs),
    )


@router.get("/coverage")
async def coverage(
    pool: PoolDep,
    settings: SettingsDep,
    catalogue: CatalogueDep,
    cursors: CursorsDep,
    _: Reader,
    month: Annotated[str, Query(min_length=7, max_length=7, description="YYYY-MM")],
    domain: Annotated[str | None, Query(max_length=100)] = None,
    limit: Limit = 1000,
    cursor: Cursor = None,
) -> CoveragePage:
    """Per district: devices registered and reporting, completeness, and metrics with no data."""
    try:
        first = parse_month(month)
    except ValueError as exc:
        raise Problem(400, "Bad month", str(exc), parameter="month") from None
    start = datetime(first.year, first.month, 1, tzinfo=UTC)
    following = next_month(first)
    end = datetime(following.year, following.month, 1, tzinfo=UTC)
    rows = await report_queries.coverage(pool, start, end, datetime.now(UTC), domain)
    specs = [catalogue[m] for m in sorted(catalogue)]
    if domain is not None:
        specs = [s for s in specs if domain in s.domains]
    items = [_district(r, specs, settings.suppression_k) for r in rows]
    if cursor:
        # Districts are few; the key is the last district served (null sorts last, as in the query).
        last = cursors.decode("coverage", cursor, 1)[0]
        items = [i for i in items if last is not None and (i.district is None or i.district > str(last))]
    page = cursors.page_of(items, limit, "coverage", lambda i: [i.district])
    return CoveragePage(
        items=page.items,
        next_cursor=page.next_cursor,
        month=month,
        domain=domain,
        coverage_rule=COVERAGE_RULE,
    )
