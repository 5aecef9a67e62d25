"""Shared ``Annotated`` dependencies and parameter checks of the routes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from api.cursor_key import CursorKey
from api.pagination import Cursors
from api.problems import Problem
from api.settings import ApiSettings
from api.statistics_cache import StatisticsCache
from core.catalogue import Catalogue, MetricSpec


async def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def _settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def _catalogue(request: Request) -> Catalogue:
    catalogue: Catalogue = request.app.state.catalogue
    return catalogue


async def _statistics_cache(request: Request) -> StatisticsCache:
    cache: StatisticsCache = request.app.state.statistics_cache
    return cache


async def _cursors(request: Request) -> Cursors:
    keys: CursorKey = request.app.state.cursor_key
    return await keys.cursors(request.app.state.pool)


PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
SettingsDep = Annotated[ApiSettings, Depends(_settings)]
CatalogueDep = Annotated[Catalogue, Depends(_catalogue)]
StatisticsCacheDep = Annotated[StatisticsCache, Depends(_statistics_cache)]
CursorsDep = Annotated[Cursors, Depends(_cursors)]


def metric_spec(catalogue: Catalogue, metric: str) -> MetricSpec:
    """The catalogue entry of ``metric``; a 400 problem naming the known metrics otherwise."""
    spec = catalogue.get(metric)
    if spec is None:
        raise Problem(
            400,
            "Unknown metric",
            f"there is no metric {metric!r}; use one of: {', '.join(sorted(catalogue))}",
            parameter="metric",
        )
    return spec


def utc(value: datetime, name: str) -> datetime:
    """``value`` as aware UTC; a 400 problem for a time without an offset."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise Problem(
            400,
            "Time without offset",
            f"`{name}` has no UTC offset; write RFC 3339 times such as 2024-03-01T00:00:00Z",
            parameter=name,
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise Problem(400, "Time out of range", f"`{name}` is out of range", parameter=name) from None


def time_range(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC; a 400 problem unless start < end."""
    lo, hi = utc(start, "start"), utc(end, "end")
    if lo >= hi:
        raise Problem(
            400,
            "Empty time range",
            f"start {lo.isoformat()} is not before end {hi.isoformat()}; the range is [start, end)",
            parameter="start",
        )
    return lo, hi
