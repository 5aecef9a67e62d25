"""Response models of the operators' endpoints: consumer lag and the dashboard's overview."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

HealthState = Literal["up", "degraded", "down"]


class PartitionLag(BaseModel):
    """One consumer group's position in one partition."""

    group_id: str
    topic: str
    partition: int
    end_offset: int | None = Field(
        description="The offset after the partition's last record, read from the partition past the end "
        "Kafka reports (Tansu reports less after batched writes); possibly low if that read was not "
        "answered in time (`warning` says so); null when Kafka did not answer."
    )
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


class ComponentHealth(BaseModel):
    """Whether one part of the pipeline answers, and why not."""

    name: str
    kind: Literal["api", "database", "kafka", "bridge", "consumer", "component"]
    state: HealthState = Field(
        description="up: ready; degraded: answers but is not ready (see detail); down: no answer in time."
    )
    detail: str | None = None
    url: str | None = Field(None, description="Where a bridge or consumer was asked (its /readyz).")
    latency_ms: float | None = Field(None, description="Time to the answer, when there was one.")


class Figure(BaseModel):
    """A counter summed over its sources, and its growth per second."""

    total: float | None = Field(description="Sum over the sources that answered; null if none did.")
    per_s: float | None = Field(
        description="Per-second growth over `window_s`, summed over the sources seen both times; "
        "null on this API process's first sample."
    )


class Throughput(BaseModel):
    """Readings into Kafka and into the store, from the components' counters and from Kafka offsets."""

    window_s: float | None = Field(description="Seconds between the two samples the rates compare.")
    ingest_readings: Figure = Field(description="Valid readings the bridges forwarded to Kafka.")
    ingest_messages: Figure = Field(description="MQTT messages the bridges received.")
    consume_readings: Figure = Field(description="Readings in the batches the consumers applied.")
    stored_readings: Figure = Field(description="Readings new to the store (duplicates excluded).")
    dead_letters: Figure = Field(description="Dead-letter records written by bridges and consumers.")
    kafka_records_in: Figure = Field(description="Records in the readings topic (sum of end offsets).")
    kafka_records_applied: Figure = Field(
        description="Records of the readings topic the store applied (sum of stored offsets over groups)."
    )


class ReasonCount(BaseModel):
    """Rejections of one reason, counted by the components since they started."""

    reason: str
    count: int


class DeadLetterSample(BaseModel):
    """One of the latest records of the dead-letter topic."""

    partition: int
    offset: int
    received_at: datetime | None = Field(description="When the bridge received it (or Kafka got it).")
    reason: str
    message: str
    source: str = Field(description="`mqtt` for a device payload, `kafka` for an undecodable record.")
    origin: str = Field(description="The MQTT topic, or topic/partition/offset of the Kafka record.")
    device_id: str | None
    component_id: str | None
    excerpt: str = Field(
        description="The start of the rejected payload as text (untrusted: escape it before display)."
    )
    payload_bytes: int
    rejected_readings: dict[str, int] | None = Field(
        None,
        description="When only some readings of the payload were rejected: all of them, by reason (the "
        "record's `reason` is the most frequent); null when the whole payload or record was rejected.",
    )


class DeadLetters(BaseModel):
    """Dead-lettered payloads: counts by reason and the latest records of the dead-letter topic."""

    by_reason: list[ReasonCount] = Field(description="From the components' counters, largest first.")
    counted_total: int = Field(description="Sum of `by_reason`.")
    in_topic: int | None = Field(description="Records the dead-letter topic holds now (retention applies).")
    latest: list[DeadLetterSample] = Field(description="Newest first.")
    warning: str | None = None


class UnregisteredDevice(BaseModel):
    """A device that sent readings but was never registered."""

    device_id: str
    domain: str
    first_seen: datetime | None
    last_seen: datetime | None


class UnregisteredDevices(BaseModel):
    """Devices the consumers registered automatically as `unregistered`: count and newest few."""

    count: int | None = Field(description="Null when the store did not answer.")
    latest: list[UnregisteredDevice] = Field(description="Most recently first seen first.")


class Overview(BaseModel):
    """Everything the operators' dashboard (/ops) shows, in one answer."""

    generated_at: datetime
    health: list[ComponentHealth]
    lag: Lag
    throughput: Throughput
    dead_letters: DeadLetters
    unregistered: UnregisteredDevices
