"""``/v1/statistics/releases`` and ``/v1/statistics/revisions``: publish and cite releases, read revisions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field

from api import release_queries
from api.auth import Principal, Scope, require
from api.deps import CatalogueDep, CursorsDep, PoolDep, SettingsDep, metric_spec
from api.pagination import Cursor, Limit, Page
from api.problems import Problem
from api.releases import MonthNotClosed, publish
from api.statistics import next_month, parse_month
from api.statistics_source import ReleaseInfo, list_releases, release_info

router = APIRouter(prefix="/v1/statistics", tags=["statistics"])
Reader = Annotated[Principal, Depends(require(Scope.STATISTICS_READ))]
Publisher = Annotated[Principal, Depends(require(Scope.STATISTICS_PUBLISH))]
ReleaseNumber = Annotated[int, Path(ge=1, le=2_147_483_647, description="The release number.")]


class ReleaseIn(BaseModel):
    """What to publish: closed months, a note, and optionally which metrics (default: all)."""

    months: list[Annotated[str, Field(min_length=7, max_length=7)]] = Field(
        min_length=1, max_length=120, description="Closed months, YYYY-MM (UTC calendar months)."
    )
    note: str = Field(max_length=4000, description="Why this release is made, shown with it.")
    metrics: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, min_length=1, max_length=500, description="Catalogue metrics; default every one."
    )


class SourceDevices(BaseModel):
    """Registered devices of one provenance and domain when the release was published."""

    provenance: str
    domain: str
    active: int
    inactive: int
    unregistered: int


class Source(BaseModel):
    """Where the figures come from."""

    description: str
    devices: list[SourceDevices]


class Suppression(BaseModel):
    """The disclosure control applied."""

    k: int = Field(description="Cells with fewer reporting devices are suppressed (primary).")
    primary: str
    secondary: str


class MetricMethod(BaseModel):
    """A metric as published: canonical unit, kind and decimals."""

    metric: str
    unit: str
    kind: str
    decimals: int


class Conversion(BaseModel):
    """A unit conversion applied on ingestion: ``to = value * scale + offset``."""

    from_: str = Field(alias="from")
    to: str
    scale: float
    offset: float


class Methods(BaseModel):
    """How the figures are computed."""

    rollups: dict[str, str]
    completeness_rule: str
    suppression: Suppression
    metrics: list[MetricMethod]
    unit_conversions: list[Conversion] = Field(description="Conversions into the published units.")


class CoverageGap(BaseModel):
    """Districts and domains with registered active devices of which none reported in a month."""

    month: str
    districts_without_reporting_device: list[str]
    domains_without_reporting_device: list[str]


class Timeliness(BaseModel):
    """Release lag of one month: publication time minus the month's end."""

    month: str
    month_end: datetime
    release_lag_days: float


class ReferenceMetadata(BaseModel):
    """Reference metadata of a release (UN NQAF-style headings), stored with it: it never changes."""

    release: int
    published_at: datetime
    source: Source
    methods: Methods
    coverage: list[CoverageGap]
    timeliness: list[Timeliness]
    revisions_policy: str


class Release(BaseModel):
    """A published release: what it holds and when it was made."""

    release: int = Field(description="The release number (1, 2, ... without gaps).")
    published_at: datetime
    note: str
    months: list[str]
    metrics: list[str]
    cells: int = Field(description="Cells stored: every metric, month and breakdown.")
    revisions: int = Field(description="Revision rows recorded against earlier releases.")
    suppression_k: int
    published_by: str = Field(description="Id of the API key that published it.")
    metadata: ReferenceMetadata


class ReleasePage(Page[Release]):
    """Releases, oldest first."""


class RevisionItem(BaseModel):
    """One published field of one cell that a release changed (revision log)."""

    release: int
    previous_release: int
    metric: str
    by: list[str]
    period: str
    district: str | None = Field(description="`_T` when not broken down, null for unknown.")
    domain: str | None
    provenance: str | None
    field: str
    old_value: float | int | str | None
    new_value: float | int | str | None
    cause: str = Field(description="registry, late_readings, correction or disclosure (docs/statistics.md).")


class RevisionPage(Page[RevisionItem]):
    """Revisions of one month."""

    period: str


def _release(info: ReleaseInfo) -> Release:
    return Release(
        release=info.release,
        published_at=info.published_at,
        note=info.note,
        months=info.months,
        metrics=info.metrics,
        cells=info.cells,
        revisions=info.revisions,
        suppression_k=info.suppression_k,
        published_by=info.key_id,
        metadata=ReferenceMetadata.model_validate(info.metadata),
    )


async def _known(pool: Any, number: int) -> ReleaseInfo:
    info = await release_info(pool, number)
    if info is None:
        raise Problem(
            404, "Unknown release", f"there is no release {number}; list them at /v1/statistics/releases"
        )
    return info


@router.post(
    "/releases",
    status_code=201,
    responses={
        201: {"description": "Published; `Location` names the release."},
        409: {"description": "A month has not ended yet."},
    },
)
async def create_release(
    request: Request,
    pool: PoolDep,
    settings: SettingsDep,
    catalogue: CatalogueDep,
    principal: Publisher,
    body: ReleaseIn,
    response: Response,
) -> Release:
    """Freeze every table of the named closed months as the next release (immutable, numbered)."""
    try:
        months = sorted({parse_month(m) for m in body.months})
    except ValueError as exc:
        raise Problem(400, "Bad month", str(exc), parameter="months") from None
    now = datetime.now(UTC)
    open_ = [f"{m:%Y-%m}" for m in months if datetime(*next_month(m).timetuple()[:3], tzinfo=UTC) > now]
    if open_:
        raise Problem(
            409,
            "Month not closed",
            f"{', '.join(open_)} has not ended yet; only closed months can be released",
            parameter="months",
        )
    wanted = body.metrics if body.metrics is not None else list(catalogue)
    metrics = sorted({metric_spec(catalogue, m).name for m in wanted})
    # The SDMX structures are brought up to date first: SDMX reads a release with the dataflow version
    # current when it was published, which must already know every district the release holds.
    await request.app.state.sdmx_structures.current(pool)
    try:
        info = await publish(pool, settings, catalogue, months, metrics, body.note, principal.key_id)
    except MonthNotClosed as exc:
        raise Problem(409, "Month not closed", str(exc), parameter="months") from None
    response.headers["Location"] = f"/v1/statistics/releases/{info.release}"
    return _release(info)


@router.get("/releases")
async def releases(
    pool: PoolDep, cursors: CursorsDep, _: Reader, limit: Limit = 1000, cursor: Cursor = None
) -> ReleasePage:
    """Published releases, oldest first."""
    after = 0
    if cursor:
        last = cursors.decode("releases", cursor, 1)[0]
        if not isinstance(last, int) or isinstance(last, bool):
            raise Problem(400, "Invalid cursor", "pass the `next_cursor` of the previous page unchanged")
        after = last
    items = [_release(i) for i in await list_releases(pool, after, limit + 1)]
    page = cursors.page_of(items, limit, "releases", lambda r: [r.release])
    return ReleasePage(items=page.items, next_cursor=page.next_cursor)


@router.get("/releases/{release}", responses={404: {"description": "No such release."}})
async def release(pool: PoolDep, _: Reader, release: ReleaseNumber) -> Release:
    """One release, with its reference metadata."""
    return _release(await _known(pool, release))


@router.get("/releases/{release}/metadata", responses={404: {"description": "No such release."}})
async def metadata(pool: PoolDep, _: Reader, release: ReleaseNumber) -> ReferenceMetadata:
    """The reference metadata (NQAF headings) stored with a release."""
    return ReferenceMetadata.model_validate((await _known(pool, release)).metadata)


def _value(text: str | None) -> float | int | str | None:
    if text is None:
        return None
    value: float | int | str | None = orjson.loads(text)
    return value


def _key(value: str) -> str | None:
    return value or None


@router.get("/revisions")
async def revisions(
    pool: PoolDep,
    catalogue: CatalogueDep,
    cursors: CursorsDep,
    _: Reader,
    period: Annotated[str, Query(min_length=7, max_length=7, description="YYYY-MM")],
    metric: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    release: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
    limit: Limit = 1000,
    cursor: Cursor = None,
) -> RevisionPage:
    """The revision log of one month: per cell and field, old and new value and the cause."""
    try:
        month = parse_month(period)
    except ValueError as exc:
        raise Problem(400, "Bad month", str(exc), parameter="period") from None
    if metric is not None:
        metric_spec(catalogue, metric)
    after: list[str] | None = None
    if cursor:
        after = cursors.decode("revisions", cursor, 7)
        if not all(isinstance(p, str) for p in after):
            raise Problem(400, "Invalid cursor", "pass the `next_cursor` of the previous page unchanged")
    rows = await release_queries.list_revisions(pool, month, metric, release, after, limit + 1)
    items = [
        RevisionItem(
            release=r["release"],
            previous_release=r["previous_release"],
            metric=r["metric"],
            by=[b for b in r["by_columns"].split(",") if b],
            period=period,
            district=_key(r["district"]),
            domain=_key(r["domain"]),
            provenance=_key(r["provenance"]),
            field=r["field"],
            old_value=_value(r["old_value"]),
            new_value=_value(r["new_value"]),
            cause=r["cause"],
        )
        for r in rows
    ]
    page = cursors.page_of(
        items,
        limit,
        "revisions",
        lambda i: [
            str(i.release),
            i.metric,
            ",".join(i.by),
            i.district or "",
            i.domain or "",
            i.provenance or "",
            i.field,
        ],
    )
    return RevisionPage(items=page.items, next_cursor=page.next_cursor, period=period)
