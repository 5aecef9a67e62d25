"""``/v1/ops/lag`` (consumer lag per partition) and ``/metrics`` (Prometheus), for operators."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from api import kafka, report_queries
from api.auth import Principal, Scope, require
from api.deps import PoolDep, SettingsDep
from api.metrics import ApiMetrics

router = APIRouter(tags=["ops"])
Operator = Annotated[Principal, Depends(require(Scope.OPS_READ))]


class PartitionLag(BaseModel):
    """One consumer group's position in one partition."""

    group_id: str
    topic: str
    partition: int
    end_offset: int | None = Field(description="Kafka high watermark; null when Kafka did not answer.")
    stored_offset: int | None = Field(description="Next offset the store will apply; null if none yet.")
    lag: int | None = Field(description="max(0, end - stored); null when the end offset is unknown.")
    last_applied_at: datetime | None


class LagTotals(BaseModel):
    """Sums over all partitions (lag only over partitions with a known end offset)."""

    partitions: int
    lag: int | None
    end_offset: int | None
    stored_offset: int


class Lag(BaseModel):
    """Consumer lag: per group, topic and partition, with totals and a warning if Kafka is unreachable."""

    partitions: list[PartitionLag]
    totals: LagTotals
    warning: str | None = None


@router.get("/v1/ops/lag")
async def lag(pool: PoolDep, settings: SettingsDep, _: Operator) -> Lag:
    """Per consumer group, topic and partition: end offset, stored offset, lag, last applied batch."""
    rows = await report_queries.stored_offsets(pool)
    stored = {(r["group_id"], r["topic"], int(r["partition"])): r for r in rows}
    topics = {r["topic"] for r in rows}
    ends = await kafka.end_offsets(settings.kafka_bootstrap, topics, settings.kafka_timeout_s)
    keys = set(stored)
    if ends is not None:
        # Partitions a group has never applied a batch of are lagging too.
        for group in {g for g, _, _ in stored}:
            group_topics = {t for g, t, _ in stored if g == group}
            keys |= {(group, t, p) for t, p in ends if t in group_topics}
    items: list[PartitionLag] = []
    for key in sorted(keys):
        row = stored.get(key)
        end = ends.get(key[1:]) if ends is not None else None
        offset = int(row["next_offset"]) if row is not None else None
        items.append(
            PartitionLag(
                group_id=key[0],
                topic=key[1],
                partition=key[2],
                end_offset=end,
                stored_offset=offset,
                lag=None if end is None else max(0, end - (offset or 0)),
                last_applied_at=row["applied_at"] if row is not None else None,
            )
        )
    known = [i for i in items if i.lag is not None]
    totals = LagTotals(
        partitions=len(items),
        lag=sum(i.lag or 0 for i in known) if ends is not None else None,
        end_offset=sum(i.end_offset or 0 for i in known) if ends is not None else None,
        stored_offset=sum(i.stored_offset or 0 for i in items),
    )
    warning = None
    if ends is None:
        warning = (
            f"Kafka at {settings.kafka_bootstrap} did not answer within {settings.kafka_timeout_s:g} s: "
            "end offsets and lag are unknown; stored offsets are current"
        )
    return Lag(partitions=items, totals=totals, warning=warning)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request, _: Operator) -> Response:
    """Prometheus metrics of this API process."""
    api_metrics: ApiMetrics = request.app.state.metrics
    return Response(generate_latest(api_metrics.registry), media_type=CONTENT_TYPE_LATEST)
