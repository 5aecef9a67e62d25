"""Settings of the Kafka -> TimescaleDB consumer (``cityingest consume``), read from ``CITYINGEST_*``."""

from __future__ import annotations

import os
import socket

from pydantic import Field

from core.settings import DatabaseSettings, KafkaSettings


def _default_consumer_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ConsumerSettings(KafkaSettings, DatabaseSettings):
    """Everything the consumer needs: Kafka source, database sink, batching, retention and HTTP port."""

    group_id: str = Field(
        "cityingest-consumers",
        description="Kafka consumer group; the consumers of one group split the readings partitions.",
    )
    consumer_id: str = Field(
        default_factory=_default_consumer_id,
        description="Identifier of this consumer in logs, dead letters and the offsets table.",
    )
    batch_max_records: int = Field(
        100_000,
        ge=1,
        description="Most Kafka records applied to the store in one database transaction. Catching up a "
        "backlog, larger batches fold more readings into each rollup row they update (a batch of 100,000 "
        "records of 3 readings holds ~125 MB while it is applied).",
    )
    batch_max_bytes: int = Field(
        24 * 1024 * 1024,
        ge=1024,
        description="Most bytes of Kafka record values in one batch, whichever of this and batch_max_records "
        "comes first. Bounds the consumer's memory while it catches up a backlog of large records (SenML "
        "packs): one batch decoded holds about 6 times its record bytes, and two are in flight.",
    )
    batch_max_wait_ms: int = Field(
        200, ge=0, description="How long to wait for a batch to fill before applying what has arrived."
    )
    auto_offset_reset: str = Field(
        "earliest",
        pattern="^(earliest|latest)$",
        description="Where to start a partition the store has no offset for: earliest or latest.",
    )
    kafka_session_timeout_ms: int = Field(
        10_000,
        ge=1000,
        description="How long the group waits for a silent consumer before giving its partitions away.",
    )
    commit_to_kafka: bool = Field(
        True,
        description="Also commit offsets to Kafka, for lag tools (the store stays the source of truth).",
    )
    db_pool_size: int = Field(
        3,
        ge=1,
        le=16,
        description="Database connections; batches of disjoint partitions apply in parallel (more than the "
        "database's cores keeps them busy while one connection commits or waits for the others).",
    )
    db_retry_max_s: float = Field(
        10.0, gt=0, description="Longest pause between attempts while the database is unavailable."
    )
    assign_store_wait_s: float = Field(
        60.0,
        gt=0,
        description="How long a consumer given partitions waits for the database to read their stored "
        "offsets; the whole group waits meanwhile, so past this the consumer exits (status 1) to be "
        "restarted.",
    )
    retention_days: float = Field(
        90.0, gt=0, description="Raw readings older than this many days are dropped; rollups are kept."
    )
    maintenance_interval_s: float = Field(
        3600.0, gt=0, description="How often the retention task runs (seconds)."
    )
    catalogue_file: str | None = Field(
        None, description="JSON file of extra metrics to add to the shipped catalogue (counter metrics!)."
    )
    kafka_idempotence: bool = Field(
        True, description="Use the idempotent Kafka producer for dead letters (off for Tansu)."
    )
    http_host: str = Field("127.0.0.1", description="Address of the consumer's /metrics /healthz /readyz.")
    http_port: int = Field(
        9102, ge=0, le=65535, description="Port of the consumer's HTTP endpoints (0 = pick a free one)."
    )
