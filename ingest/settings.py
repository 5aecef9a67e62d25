"""Settings of the MQTT -> Kafka bridge (``cityingest bridge``), read from ``CITYINGEST_*`` or flags."""

from __future__ import annotations

import os
import socket

from pydantic import Field

from core.settings import KafkaSettings, MqttSettings


def _default_bridge_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _default_client_id() -> str:
    # Stable across restarts on purpose: the broker keeps the persistent session (and the messages
    # queued while the bridge was down) under this id.
    return f"cityingest-bridge-{socket.gethostname()}"


class BridgeSettings(KafkaSettings, MqttSettings):
    """Everything the bridge needs: MQTT source, Kafka sink, validation limits and its HTTP port."""

    bridge_id: str = Field(
        default_factory=_default_bridge_id,
        description="Identifier written into every envelope and dead letter (default: hostname-pid).",
    )
    client_id: str = Field(
        default_factory=_default_client_id,
        description="MQTT client id; must be stable across restarts and unique per bridge process.",
    )
    shared_group: str | None = Field(
        None,
        description="Subscribe via the MQTT 5 shared subscription $share/<group>/... to split load.",
    )
    mqtt_session_expiry_s: int = Field(
        86_400,
        ge=0,
        description="How long the broker keeps the bridge's session (and queues messages) while it is away.",
    )
    mqtt_keepalive_s: int = Field(30, ge=5, description="MQTT keep-alive interval in seconds.")
    max_in_flight: int = Field(
        1000,
        ge=1,
        le=65535,
        description="MQTT messages received but not yet acknowledged (also the MQTT 5 Receive Maximum).",
    )
    max_in_flight_bytes: int = Field(
        67_108_864,
        ge=1,
        description="Bytes of Kafka records (envelopes, dead letters) of unacknowledged messages above "
        "which the bridge stops reading MQTT until acks bring them below (64 MiB; one message above passes).",
    )
    max_payload_bytes: int = Field(
        262_144, ge=1, description="Payloads larger than this are dead-lettered without parsing."
    )
    max_future_skew_s: float = Field(
        300.0, ge=0, description="Readings timestamped further than this in the future are rejected."
    )
    catalogue_file: str | None = Field(
        None, description="JSON file of extra metrics and unit conversions to add to the shipped catalogue."
    )
    kafka_idempotence: bool = Field(
        True, description="Use the idempotent Kafka producer (turn off for brokers without it, e.g. Tansu)."
    )
    kafka_linger_ms: int = Field(5, ge=0, description="How long the producer waits to fill a batch.")
    kafka_max_batch_bytes: int = Field(
        1_048_576, ge=16_384, description="Largest Kafka producer batch per partition, in bytes."
    )
    kafka_retry_backoff_s: float = Field(
        0.5, gt=0, description="First delay before re-sending readings Kafka refused (doubles, max 30 s)."
    )
    http_host: str = Field("127.0.0.1", description="Address of the bridge's /metrics /healthz /readyz.")
    http_port: int = Field(
        9100, ge=0, le=65535, description="Port of the bridge's HTTP endpoints (0 = pick a free one)."
    )
