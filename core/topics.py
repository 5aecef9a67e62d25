"""Default Kafka topic names and the MQTT topic layout devices publish on."""

from __future__ import annotations

from typing import Final

READINGS_TOPIC: Final = "readings"
DLQ_TOPIC: Final = "readings.dlq"
MQTT_TOPIC_PREFIX: Final = "city"
TELEMETRY_SUFFIX: Final = "telemetry"


def telemetry_topic(prefix: str, domain: str, device_id: str) -> str:
    """The MQTT topic a device publishes its readings on: ``<prefix>/<domain>/<device_id>/telemetry``."""
    return f"{prefix}/{domain}/{device_id}/{TELEMETRY_SUFFIX}"


def telemetry_filter(prefix: str, shared_group: str | None = None) -> str:
    """The bridge's MQTT subscription, optionally shared: everything under the prefix.

    Wider than the telemetry topics on purpose: a device that publishes to ``<prefix>/<domain>/<id>/status``
    or one level too deep gets a ``bad_topic`` dead letter the operators see, instead of an acknowledged
    message that silently goes nowhere.
    """
    flt = f"{prefix}/#"
    return f"$share/{shared_group}/{flt}" if shared_group else flt
