"""Settings of ``cityingest api``."""

from __future__ import annotations

from pydantic import Field

from core.settings import DatabaseSettings, KafkaSettings


class ApiSettings(DatabaseSettings, KafkaSettings):
    """Where the API listens, what it reads from and its disclosure-control and paging limits."""

    api_host: str = Field("127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(8000, ge=0, le=65535, description="Port the API listens on.")
    db_pool_size: int = Field(10, ge=1, description="Maximum database connections of the API.")
    ready_timeout_s: float = Field(2.0, gt=0, description="How long /readyz waits for the database.")
    catalogue_file: str | None = Field(
        None, description="JSON file of extra metrics to add to the shipped catalogue."
    )
    suppression_k: int = Field(
        3,
        ge=1,
        description="Statistics cells with fewer reporting devices than this are suppressed.",
    )
    raw_max_range_days: float = Field(
        7.0, gt=0, description="Widest time range of a raw-readings series (bucket=raw), in days."
    )
    max_months: int = Field(120, ge=1, description="Most months one statistics or coverage request may span.")
    kafka_timeout_s: float = Field(
        3.0,
        gt=0,
        description="How long /v1/ops/lag waits for Kafka end offsets before answering without them.",
    )
