"""``GET /v1/ops/overview``: every figure of the operators' dashboard, each source asked concurrently.

Nothing here fails the request because one source is down: the store, Kafka and every component are
each bounded by a timeout, and what did not answer is reported as ``down`` while the rest is shown.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from api.ops import queries
from api.ops.components import ComponentReport, probe_all
from api.ops.kafka import KafkaSnapshot, TailRecord, snapshot
from api.ops.lag import build_lag, kafka_warning, unsettled_warning
from api.ops.models import (
    ComponentHealth,
    DeadLetters,
    DeadLetterSample,
    Figure,
    Overview,
    ReasonCount,
    Throughput,
    UnregisteredDevice,
    UnregisteredDevices,
)
from api.ops.prom import CONSUME_READINGS, DEAD_LETTERS, INGEST_MESSAGES, INGEST_READINGS, STORED_READINGS
from api.ops.rates import Rates, RateTracker
from api.settings import ApiSettings
from core.errors import StoreUnavailable

EXCERPT_CHARS = 160
MESSAGE_CHARS = 300
KAFKA_RECORDS_IN = "kafka_records_in"
KAFKA_RECORDS_APPLIED = "kafka_records_applied"


@dataclass(frozen=True, slots=True)
class StoreRead:
    """What the store said: stored offsets and unregistered devices, or why it said nothing."""

    offsets: list[asyncpg.Record] = field(default_factory=list)
    unregistered_count: int | None = None
    unregistered: list[asyncpg.Record] = field(default_factory=list)
    latency_ms: float | None = None
    error: str | None = None


async def build_overview(
    pool: asyncpg.Pool, settings: ApiSettings, tracker: RateTracker, latest: int
) -> Overview:
    """The overview: components asked while the store, then Kafka, answer."""
    async with asyncio.TaskGroup() as tasks:
        components = tasks.create_task(probe_all(settings.ops_components, settings.ops_timeout_s))
        store = await read_store(pool, latest, settings.ops_timeout_s)
        topics = {settings.readings_topic, *(str(r["topic"]) for r in store.offsets)}
        kafka = await snapshot(
            settings.kafka_bootstrap, topics, settings.dlq_topic, latest, settings.kafka_timeout_s
        )
    reports = components.result()
    sample: dict[str, dict[str, float]] = {r.name: r.scrape.counters for r in reports if r.state != "down"}
    if kafka.ends is not None:
        ends = kafka.ends.items()
        sample["kafka"] = {KAFKA_RECORDS_IN: sum(e for (t, _), e in ends if t == settings.readings_topic)}
    if store.error is None:
        stored = (int(r["next_offset"]) for r in store.offsets if r["topic"] == settings.readings_topic)
        sample["store"] = {KAFKA_RECORDS_APPLIED: sum(stored)}
    rates = tracker.observe(time.monotonic(), sample)
    lag_warning = None
    if store.error is not None:
        lag_warning = f"{store.error}: stored offsets are unknown"
    elif kafka.ends is None:
        lag_warning = kafka_warning(settings.kafka_bootstrap, settings.kafka_timeout_s)
    else:
        lag_warning = unsettled_warning(kafka.unsettled)
    return Overview(
        generated_at=datetime.now(UTC),
        health=_health(settings, store, kafka, reports),
        lag=build_lag(store.offsets, kafka.ends, lag_warning),
        throughput=_throughput(sample, rates),
        dead_letters=_dead_letters(settings, kafka, reports),
        unregistered=UnregisteredDevices(
            count=store.unregistered_count,
            latest=[UnregisteredDevice(**dict(r)) for r in store.unregistered],
        ),
    )


async def read_store(pool: asyncpg.Pool, latest: int, timeout_s: float) -> StoreRead:
    """Stored offsets and unregistered devices, or the reason the store did not answer in time."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            offsets = await queries.stored_offsets(pool)
            count, rows = await queries.unregistered_devices(pool, latest)
    except (TimeoutError, StoreUnavailable) as exc:
        # A bug (StoreBug) is not an outage: it fails the request as a 500 instead of reading "down".
        if isinstance(exc, TimeoutError):
            return StoreRead(error=f"the database did not answer (no answer within {timeout_s:g} s)")
        return StoreRead(error=str(exc))
    return StoreRead(offsets, count, rows, (time.monotonic() - started) * 1000)


def _health(
    settings: ApiSettings, store: StoreRead, kafka: KafkaSnapshot, reports: Iterable[ComponentReport]
) -> list[ComponentHealth]:
    health = [
        ComponentHealth(name="api", kind="api", state="up", detail="this process answered"),
        ComponentHealth(
            name="database",
            kind="database",
            state="up" if store.error is None else "down",
            detail=store.error,
            latency_ms=store.latency_ms,
        ),
        ComponentHealth(
            name="kafka",
            kind="kafka",
            state="up" if kafka.ends is not None else "down",
            detail=settings.kafka_bootstrap + (f": {kafka.error}" if kafka.error else ""),
            latency_ms=kafka.latency_ms,
        ),
    ]
    health += [
        ComponentHealth(
            name=r.name, kind=r.kind, state=r.state, detail=r.detail, url=r.url, latency_ms=r.latency_ms
        )
        for r in reports
    ]
    return health


def _throughput(sample: dict[str, dict[str, float]], rates: Rates) -> Throughput:
    def figure(name: str) -> Figure:
        values = [counters[name] for counters in sample.values() if name in counters]
        return Figure(total=sum(values) if values else None, per_s=rates.per_s.get(name))

    return Throughput(
        window_s=rates.window_s,
        ingest_readings=figure(INGEST_READINGS),
        ingest_messages=figure(INGEST_MESSAGES),
        consume_readings=figure(CONSUME_READINGS),
        stored_readings=figure(STORED_READINGS),
        dead_letters=figure(DEAD_LETTERS),
        kafka_records_in=figure(KAFKA_RECORDS_IN),
        kafka_records_applied=figure(KAFKA_RECORDS_APPLIED),
    )


def _dead_letters(
    settings: ApiSettings, kafka: KafkaSnapshot, reports: Iterable[ComponentReport]
) -> DeadLetters:
    counts: Counter[str] = Counter()
    for report in reports:
        for reason, count in report.scrape.rejected.items():
            counts[reason] += int(count)
    warnings = []
    if not settings.ops_components:
        warnings.append("no bridge or consumer configured (CITYINGEST_OPS_COMPONENTS): no counts by reason")
    if kafka.ends is None:
        warnings.append(f"Kafka did not answer: the latest dead letters are unknown ({kafka.error})")
    elif kafka.tail_error is not None:
        warnings.append(kafka.tail_error)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return DeadLetters(
        by_reason=[ReasonCount(reason=r, count=c) for r, c in ranked],
        counted_total=sum(counts.values()),
        in_topic=kafka.dlq_size,
        latest=[dead_letter_sample(settings.dlq_topic, r) for r in kafka.tail],
        warning="; ".join(warnings) or None,
    )


def dead_letter_sample(topic: str, record: TailRecord) -> DeadLetterSample:
    """A dead-letter record as the overview shows it: fields, and the payload's start as plain text."""
    kafka_time = _from_us(record.timestamp_ms * 1000)
    dl = record.dead_letter
    if dl is None:
        return DeadLetterSample(
            partition=record.partition,
            offset=record.offset,
            received_at=kafka_time,
            reason="undecodable",
            message=(record.error or "")[:MESSAGE_CHARS],
            source="kafka",
            origin=f"{topic}/{record.partition}/{record.offset}",
            device_id=None,
            component_id=None,
            excerpt=excerpt(record.raw),
            payload_bytes=len(record.raw),
        )
    return DeadLetterSample(
        partition=record.partition,
        offset=record.offset,
        received_at=_from_us(dl.received_us) or kafka_time,
        reason=dl.reason,
        message=dl.message[:MESSAGE_CHARS],
        source=dl.source,
        origin=dl.origin,
        device_id=dl.device_id,
        component_id=dl.component_id,
        excerpt=excerpt(dl.raw),
        payload_bytes=len(dl.raw),
        rejected_readings=None if dl.readings is None else dict(dl.readings.rejected),
    )


def excerpt(raw: bytes, limit: int = EXCERPT_CHARS) -> str:
    """The start of a payload as one line of text: invalid UTF-8 replaced, control characters escaped."""
    text = raw[: limit * 4].decode("utf-8", "replace")
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + ("…" if len(text) > limit or len(raw) > limit * 4 else "")


def _from_us(us: int) -> datetime | None:
    try:
        return datetime.fromtimestamp(us / 1_000_000, UTC) if us > 0 else None
    except (OverflowError, ValueError, OSError):
        return None
