"""Settings of ``cityingest api``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from api.ops.config import ComponentTarget, parse_targets
from core.settings import DatabaseSettings, KafkaSettings, MqttSettings


class ApiSettings(DatabaseSettings, KafkaSettings, MqttSettings):
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
    sdmx_cache_bytes: int = Field(
        32 * 1024 * 1024,
        ge=0,
        description="Memory for rendered SDMX data messages of releases (immutable, so kept and served "
        "again for the same request); 0 turns it off.",
    )
    sdmx_max_observations: int = Field(
        200_000,
        ge=1,
        description="Most observations one /sdmx/data query may ask for (bounded from the key and the "
        "codelists before any query runs); broader queries get 413.",
    )

    dynsec_enabled: bool = Field(
        False,
        description="Issue device MQTT credentials (POST /v1/devices/{id}/credentials) through the broker's "
        "dynamic security plugin, reached with the CITYINGEST_MQTT_* settings; off: those routes answer 503.",
    )
    dynsec_username: str = Field(
        "cityingest-admin", description="The broker's dynamic security admin account."
    )
    dynsec_password: SecretStr | None = Field(
        None, description="Password of the dynamic security admin account (required with --dynsec-enabled)."
    )
    dynsec_reconcile_s: float = Field(
        5.0,
        gt=0,
        description="Seconds between two passes that bring the broker's device accounts in step "
        "with the database (also at start and after every reconnection to the broker).",
    )
    device_credential_key: SecretStr | None = Field(
        None,
        description="Secret (at least 32 characters) device passwords are derived from, so that the broker "
        "can be restored without any password stored; every API replica needs the same (default: derived "
        "from --dynsec-password). Changing it makes issued passwords unrestorable: reissue them.",
    )
    device_ca_cert_file: str | None = Field(
        None, description="PEM certificate of the device CA that signs device client certificates."
    )
    device_ca_key_file: str | None = Field(
        None, description="PEM private key of the device CA (with --device-ca-cert-file)."
    )
    device_cert_days: int = Field(
        365, ge=1, le=3650, description="Validity of device client certificates, days."
    )

    @model_validator(mode="after")
    def _dynsec_complete(self) -> ApiSettings:
        if self.dynsec_enabled and self.dynsec_password is None:
            raise ValueError("CITYINGEST_DYNSEC_PASSWORD is required with CITYINGEST_DYNSEC_ENABLED")
        key = self.device_credential_key
        if key is not None and len(key.get_secret_value()) < 32:
            raise ValueError("CITYINGEST_DEVICE_CREDENTIAL_KEY must have at least 32 characters")
        if (self.device_ca_cert_file is None) != (self.device_ca_key_file is None):
            raise ValueError(
                "give both CITYINGEST_DEVICE_CA_CERT_FILE and CITYINGEST_DEVICE_CA_KEY_FILE, or neither"
            )
        return self

    @field_validator("ops_components", mode="before")
    @classmethod
    def _parse_ops_components(cls, value: Any) -> Any:
        return parse_targets(value)
