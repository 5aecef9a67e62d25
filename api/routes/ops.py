"""Operators' endpoints: ``/v1/ops/lag``, ``/v1/ops/overview`` (the dashboard's figures), ``/metrics``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.auth import Principal, Scope, require
from api.deps import PoolDep, SettingsDep
from api.metrics import ApiMetrics
from api.ops import kafka, queries
from api.ops.lag import build_lag, kafka_warning, unsettled_warning
from api.ops.models import Lag, Overview
from api.ops.overview import build_overview
from api.ops.rates import RateTracker

router = APIRouter(tags=["ops"])
Operator = Annotated[Principal, Depends(require(Scope.OPS_READ))]


def _rate_tracker(request: Request) -> RateTracker:
    # Created on first use: the samples belong to this app (tests run several in one process).
    tracker: RateTracker | None = getattr(request.app.state, "ops_rates", None)
    if tracker is None:
        tracker = request.app.state.ops_rates = RateTracker()
    return tracker


@router.get("/v1/ops/lag")
async def lag(pool: PoolDep, settings: SettingsDep, _: Operator) -> Lag:
    """Per consumer group, topic and partition: end offset, stored offset, lag, last applied batch."""
    rows = await queries.stored_offsets(pool)
    ends = await kafka.end_offsets(
        settings.kafka_bootstrap, {r["topic"] for r in rows}, settings.kafka_timeout_s
    )
    if ends is None:
        return build_lag(rows, None, kafka_warning(settings.kafka_bootstrap, settings.kafka_timeout_s))
    return build_lag(rows, ends.ends, unsettled_warning(ends.unsettled))


@router.get("/v1/ops/overview")
async def overview(
    pool: PoolDep,
    settings: SettingsDep,
    tracker: Annotated[RateTracker, Depends(_rate_tracker)],
    _: Operator,
    latest: Annotated[
        int, Query(ge=0, le=100, description="How many of the latest dead letters and unregistered devices.")
    ] = 10,
) -> Overview:
    """What the operators' dashboard (/ops) shows: health of every part, consumer lag, throughput,
    dead letters by reason with the latest few, unregistered devices.

    Throughput rates compare with an earlier sample of this API process (null on its first). A part
    that does not answer in time is reported `down`; the rest is still answered.
    """
    return await build_overview(pool, settings, tracker, latest)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request, _: Operator) -> Response:
    """Prometheus metrics of this API process."""
    api_metrics: ApiMetrics = request.app.state.metrics
    return Response(generate_latest(api_metrics.registry), media_type=CONTENT_TYPE_LATEST)
