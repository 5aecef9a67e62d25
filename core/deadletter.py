"""The dead-letter record written to ``readings.dlq`` for every rejected payload or record, and for the
rejected readings of a message (one record per message, whatever the number of its rejected readings).

Wire format version 2 (compact JSON); version 1 records (one per rejected reading, without
``readings``) are still read::

    {"v": 2, "reason": "unknown_metric", "message": "...", "source": "mqtt",
     "origin": "city/water/meter-0042/telemetry", "device": "meter-0042",
     "payload": "...", "payload_encoding": "utf-8", "received": 1795341600123456,
     "component": "bridge-host-1234",
     "readings": {"rejected": {"unknown_metric": 9000, "non_numeric_value": 38}, "forwarded": 12,
                  "details": [[0, "unknown_metric", "reading 0: metric 'flux' is not in the catalogue"]]}}

``readings`` is null when the whole payload (or Kafka record) was rejected.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

DEAD_LETTER_VERSION: Final = 2
_READABLE_VERSIONS: Final = frozenset((1, 2))


@dataclass(frozen=True, slots=True)
class RejectedItem:
    """One rejected reading or SenML record, named by its position in the payload."""

    index: int
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class RejectedReadings:
    """The rejected readings of one otherwise accepted message: all counted, the first few in detail."""

    rejected: Mapping[str, int]
    """Every rejected reading (or SenML record) of the message, counted by reason."""
    forwarded: int
    """Valid readings of the same message, forwarded to the readings topic."""
    details: tuple[RejectedItem, ...]
    """The first rejected readings in payload order (capped by the writer; ``rejected`` counts all)."""

    @property
    def total(self) -> int:
        """How many readings of the message were rejected."""
        return sum(self.rejected.values())


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why something was rejected, and enough of it to replay or debug it."""

    reason: str
    """The reason code; for rejected readings, the most frequent one (the first in the payload on ties)."""
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
    readings: RejectedReadings | None = None
    """Set when only some readings of the payload were rejected (``raw`` is then the whole payload)."""

    def rejections(self) -> Counter[str]:
        """What this record stands for by reason: its rejected readings, or one payload or record.

        Summed over the dead-letter topic it equals the components' ``rejected`` counters."""
        if self.readings is not None:
            return Counter(self.readings.rejected)
        return Counter({self.reason: 1})


def encode_dead_letter(dl: DeadLetter) -> bytes:
    """Serialise a dead letter (format version 2).

    The raw payload is kept as text when it is UTF-8 and JSON escaping at most doubles it, as base64
    otherwise (control characters would grow sixfold), so the record stays within about twice the
    payload's size."""
    payload, encoding = _payload_text(dl.raw)
    readings: dict[str, Any] | None = None
    if dl.readings is not None:
        readings = {
            "rejected": dict(dl.readings.rejected),
            "forwarded": dl.readings.forwarded,
            "details": [[d.index, d.reason, d.message] for d in dl.readings.details],
        }
    doc: dict[str, Any] = {
        "v": DEAD_LETTER_VERSION,
        "reason": dl.reason,
        "message": dl.message,
        "source": dl.source,
        "origin": dl.origin,
        "device": dl.device_id,
        "payload": payload,
        "payload_encoding": encoding,
        "received": dl.received_us,
        "component": dl.component_id,
        "readings": readings,
    }
    return orjson.dumps(doc)


def _payload_text(raw: bytes) -> tuple[str, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"
    # The quoted JSON string is at most 2x the text for printable characters (every one a quote or a
    # backslash), up to 6x for control characters (\u0001): those go as base64 (4/3) instead.
    if len(orjson.dumps(text)) > 2 * len(raw) + 2:
        return base64.b64encode(raw).decode("ascii"), "base64"
    return text, "utf-8"


def decode_dead_letter(raw: bytes) -> DeadLetter:
    """Parse a dead-letter record of format version 1 or 2 (for tools, tests and the API).

    Raises ValueError for another version, KeyError or TypeError for a malformed record."""
    doc = orjson.loads(raw)
    version = doc["v"]
    if version not in _READABLE_VERSIONS:
        raise ValueError(f"dead-letter format version {version!r} is not one of {sorted(_READABLE_VERSIONS)}")
    payload: str = doc["payload"]
    data = base64.b64decode(payload) if doc["payload_encoding"] == "base64" else payload.encode("utf-8")
    readings = None
    if (part := doc.get("readings")) is not None:
        readings = RejectedReadings(
            rejected={str(reason): int(count) for reason, count in part["rejected"].items()},
            forwarded=int(part["forwarded"]),
            details=tuple(RejectedItem(int(i), str(r), str(m)) for i, r, m in part["details"]),
        )
    return DeadLetter(
        reason=doc["reason"],
        message=doc["message"],
        source=doc["source"],
        origin=doc["origin"],
        raw=data,
        received_us=doc["received"],
        component_id=doc["component"],
        device_id=doc.get("device"),
        readings=readings,
    )
