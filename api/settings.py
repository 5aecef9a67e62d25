"""Settings of ``cityingest api``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from api.ops.config import ComponentTarget, parse_targets
from core.settings import DatabaseSettings, DomainSettings, KafkaSettings


class ApiSettings(DatabaseSettings, KafkaSettings, DomainSettings):
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
    statistics_cache_rows: int = Field(
        50_000,
        ge=0,
        description="Monthly statistics rows of closed months kept in memory (~600 bytes each), served "
        "while the store's change counters say they still hold (0 = always query).",
    )
    raw_max_range_days: float = Field(
        7.0, gt=0, description="Widest time range of a raw-readings series (bucket=raw), in days."
    )
    max_body_bytes: int = Field(
        256 * 1024,
        ge=1,
        description="Largest request body the API reads, in bytes; larger ones are refused with 413 "
        "before they are read.",
    )
    cursor_secret: SecretStr | None = Field(
        None,
        description="Secret the paging cursors' signing key is derived from; every API replica needs "
        "the same. Unset: a random key kept in the database (table api_cursor_key) is used.",
    )
    max_months: int = Field(120, ge=1, description="Most months one statistics or coverage request may span.")
    kafka_timeout_s: float = Field(
        3.0,
        gt=0,
        description="How long /v1/ops/lag waits for Kafka end offsets before answering without them.",
    )
    ops_components: Annotated[tuple[ComponentTarget, ...], NoDecode] = Field(
        (),
        description="Bridges and consumers the operators' overview (/ops) asks for /readyz and /metrics: "
        "comma-separated name=http://host:port; name=dns+http://host:port asks every address of host "
        "(a headless Service).",
    )
    ops_timeout_s: float = Field(
        2.0, gt=0, description="How long /v1/ops/overview waits for the store and for each component."
    )

    sdmx_agency: str = Field(
        "CITYINGEST",
        pattern=r"^[A-Za-z][A-Za-z0-9_\-]*(\.[A-Za-z][A-Za-z0-9_\-]*)*$",
        max_length=100,
        description="SDMX agency id the structures and data are published under (an SDMX id).",
    )
    sdmx_dataflow: str = Field(
        "CITY_SENSORS_MONTHLY",
        pattern=r"^[A-Za-z0-9_@$\-]+$",
        max_length=100,
        description="Id of the SDMX dataflow of the monthly statistics (its DSD is DSD_<id>).",
    )
    sdmx_dataflow_name: str = Field(
        "City sensor statistics, monthly", min_length=1, description="Name of the SDMX dataflow."
    )
    sdmx_public: bool = Field(False, description="Serve /sdmx without an API key (open dissemination).")
    sdmx_max_observations: int = Field(
        200_000,
        ge=1,
        description="Most observations one /sdmx/data query may ask for (bounded from the key and the "
        "codelists before any query runs); broader queries get 413.",
    )

    @field_validator("ops_components", mode="before")
    @classmethod
    def _parse_ops_components(cls, value: Any) -> Any:
        return parse_targets(value)
