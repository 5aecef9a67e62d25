"""Settings shared by every component, read once from ``CITYINGEST_*`` variables (or flags), then frozen.

Each component composes the groups it needs (``class BridgeSettings(KafkaSettings, MqttSettings)``) in
its own package. Field descriptions double as ``--help`` text for the command-line flags.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.topics import DLQ_TOPIC, MQTT_TOPIC_PREFIX, READINGS_TOPIC
from core.types import DEFAULT_DOMAINS

ENV_PREFIX = "CITYINGEST_"


def split_csv(value: Any) -> Any:
    """Accept ``a,b,c`` from the environment or a flag as well as a real list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class CitySettings(BaseSettings):
    """Base of every settings class: env prefix, frozen after validation, unknown variables ignored."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    log_level: str = Field("INFO", description="Python logging level (DEBUG, INFO, WARNING, ...).")


class TopicSettings(CitySettings):
    """Which Kafka topics carry readings and dead letters (and how many partitions readings get)."""

    readings_topic: str = Field(READINGS_TOPIC, description="Kafka topic of validated readings.")
    dlq_topic: str = Field(DLQ_TOPIC, description="Kafka topic of dead-lettered payloads and records.")
    kafka_partitions: int = Field(
        6, ge=1, description="Partitions of the readings topic when cityingest creates it."
    )


class KafkaSettings(TopicSettings):
    """Where Kafka is and which topics carry readings and dead letters."""

    kafka_bootstrap: str = Field("localhost:9092", description="Kafka bootstrap servers, host:port[,...].")


class DatabaseSettings(CitySettings):
    """Where the PostgreSQL+TimescaleDB store is."""

    database_url: str = Field(
        "postgresql://cityingest@localhost:5432/cityingest",
        description="PostgreSQL DSN of the TimescaleDB store.",
    )


class DomainSettings(CitySettings):
    """The domains devices may belong to (and publish under)."""

    domains: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_DOMAINS, description="Comma-separated domains devices may publish under."
    )

    @field_validator("domains", mode="before")
    @classmethod
    def _split_domains(cls, value: Any) -> Any:
        return split_csv(value)


class MqttSettings(DomainSettings):
    """Where the MQTT broker is and how device topics are laid out."""

    mqtt_host: str = Field("localhost", description="MQTT broker host.")
    mqtt_port: int = Field(1883, ge=1, le=65535, description="MQTT broker port.")
    mqtt_username: str | None = Field(None, description="MQTT username, if the broker requires one.")
    mqtt_password: str | None = Field(None, description="MQTT password, if the broker requires one.")
    mqtt_topic_prefix: str = Field(
        MQTT_TOPIC_PREFIX, description="First level of device topics: <prefix>/<domain>/<device>/telemetry."
    )
    mqtt_tls: bool = Field(
        False, description="Connect to the MQTT broker over TLS (verifying its certificate and host name)."
    )
    mqtt_ca_file: str | None = Field(
        None, description="PEM file of the CA(s) that sign the broker's certificate (default: system CAs)."
    )
    mqtt_cert_file: str | None = Field(
        None, description="PEM client certificate (chain) for brokers that require one (with --mqtt-tls)."
    )
    mqtt_key_file: str | None = Field(
        None, description="PEM private key of the client certificate (default: in the certificate file)."
    )
