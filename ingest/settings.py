"""Settings of the MQTT -> Kafka bridge (``cityingest bridge``), read from ``CITYINGEST_*`` or flags."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
from typing import Any, Final

from pydantic import Field, SecretStr, model_validator

from core.settings import KafkaSettings, MqttSettings

log = logging.getLogger(__name__)

CLIENT_ID_PREFIX: Final = "cityingest-bridge"
MIN_SECRET_CHARS: Final = 32
_TAG_HEX: Final = 32  # 128 bits: not guessable, short enough for any broker's client id limit


def _default_bridge_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def derive_client_id(name: str, secret: str) -> str:
    """The bridge's MQTT client id for replica ``name``: stable for the same secret, unguessable without it.

    Whoever connects with a bridge's client id and a clean session wipes the messages queued for it;
    Mosquitto cannot reserve an id to an account, so the id itself must be a secret.
    """
    tag = hmac.new(secret.encode(), name.encode(), hashlib.sha256).hexdigest()[:_TAG_HEX]
    return f"{CLIENT_ID_PREFIX}-{name}-{tag}"


def guessable_client_id(name: str) -> str:
    """The client id a bridge used before ids were derived from a secret (anyone can work it out)."""
    return f"{CLIENT_ID_PREFIX}-{name}"


def _plain(value: Any) -> str | None:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return None if value is None else str(value)


class BridgeSettings(KafkaSettings, MqttSettings):
    """Everything the bridge needs: MQTT source, Kafka sink, validation limits and its HTTP port."""

    bridge_id: str = Field(
        default_factory=_default_bridge_id,
        description="Identifier written into every envelope and dead letter (default: hostname-pid).",
    )
    client_id: str = Field(
        "",
        description="MQTT client id, stable across restarts and unique per bridge process; whoever knows "
        "it can wipe the bridge's queued messages, so treat it as a secret (default: derived from "
        "--mqtt-client-id-secret and the bridge id, or the host name).",
    )
    mqtt_client_id_secret: SecretStr | None = Field(
        None,
        description=f"Secret (at least {MIN_SECRET_CHARS} characters) the MQTT client id is derived from: "
        "cityingest-bridge-<bridge id>-<HMAC-SHA256(secret, bridge id)>. Required when the broker "
        "asks for a username, unless --client-id is given.",
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
    ack_stall_s: float = Field(
        30.0,
        gt=0,
        description="Report not ready (/readyz) when messages wait and no MQTT acknowledgement went out "
        "for this many seconds.",
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
    kafka_max_request_bytes: int | None = Field(
        None,
        ge=1024,
        description="Largest Kafka request, so record, the producer sends (default: room for the largest "
        "dead letter, at least 1 MiB); a record above it is dead-lettered as record_too_large.",
    )
    kafka_retry_backoff_s: float = Field(
        0.5, gt=0, description="First delay before re-sending readings Kafka refused (doubles, max 30 s)."
    )
    http_host: str = Field("127.0.0.1", description="Address of the bridge's /metrics /healthz /readyz.")
    http_port: int = Field(
        9100, ge=0, le=65535, description="Port of the bridge's HTTP endpoints (0 = pick a free one)."
    )

    @model_validator(mode="before")
    @classmethod
    def _derive_client_id(cls, data: Any) -> Any:
        # Before validation: the default bridge id (hostname-pid) changes on every start, so the client
        # id is derived from an explicitly given bridge id only, else from the host name.
        if not isinstance(data, dict) or data.get("client_id"):
            return data
        secret = _plain(data.get("mqtt_client_id_secret"))
        name = str(data.get("bridge_id") or socket.gethostname())
        if secret:
            if len(secret) < MIN_SECRET_CHARS:
                raise ValueError(
                    f"mqtt_client_id_secret must have at least {MIN_SECRET_CHARS} characters "
                    "(generate one with `openssl rand -hex 32`)"
                )
            return {**data, "client_id": derive_client_id(name, secret)}
        if data.get("mqtt_username"):
            raise ValueError(
                "the broker requires a username but the bridge's MQTT client id would be the guessable "
                f"{guessable_client_id(name)!r}: any account could wipe the bridge's queued messages "
                "with it; set CITYINGEST_MQTT_CLIENT_ID_SECRET (`openssl rand -hex 32`) or a secret "
                "CITYINGEST_CLIENT_ID"
            )
        log.warning(
            "MQTT client id %r is guessable: anyone who connects with it and a clean session wipes the "
            "messages queued for this bridge; set CITYINGEST_MQTT_CLIENT_ID_SECRET",
            guessable_client_id(name),
        )
        return {**data, "client_id": guessable_client_id(name)}
