"""The dead-letter record written to ``readings.dlq`` for every rejected payload, reading or record."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why something was rejected, and enough of it to replay or debug it."""

    reason: str
    message: str
    source: str
    """``mqtt`` for a device payload, ``kafka`` for a record the consumer could not decode."""
    origin: str
    """The MQTT topic, or ``topic/partition/offset`` of the Kafka record."""
    raw: bytes
    received_us: int
    component_id: str
    """The id of the bridge or consumer that rejected it."""
    device_id: str | None = None


def encode_dead_letter(dl: DeadLetter) -> bytes:
    """Serialise a dead letter; the raw payload is kept as text when UTF-8, base64 otherwise."""
    try:
        payload: str = dl.raw.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        payload = base64.b64encode(dl.raw).decode("ascii")
        encoding = "base64"
    doc: dict[str, Any] = {
        "v": 1,
        "reason": dl.reason,
        "message": dl.message,
        "source": dl.source,
        "origin": dl.origin,
        "device": dl.device_id,
        "payload": payload,
        "payload_encoding": encoding,
        "received": dl.received_us,
        "component": dl.component_id,
    }
    return orjson.dumps(doc)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    """Parse a dead-letter record written by :func:`encode_dead_letter` (for tools, tests and the API)."""
    doc = orjson.loads(raw)
    payload: str = doc["payload"]
    data = base64.b64decode(payload) if doc["payload_encoding"] == "base64" else payload.encode("utf-8")
    return DeadLetter(
        reason=doc["reason"],
        message=doc["message"],
        source=doc["source"],
        origin=doc["origin"],
        raw=data,
        received_us=doc["received"],
        component_id=doc["component"],
        device_id=doc.get("device"),
    )
