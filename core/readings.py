"""The reading model and its Kafka wire format (the versioned readings envelope).

One Kafka record carries the readings of one MQTT message of one device, keyed by the device id so a
device's readings keep their order. The value is compact JSON::

    {"v": 1, "device": "d-1", "domain": "water", "bridge": "b-1", "received": 1732262400123456,
     "readings": [["water_flow", 1732262400000000, 12.5, 0], ...]}

Times are integer microseconds since the Unix epoch (UTC); each reading is
``[metric, ts_us, value, flags]``. Decoding is strict: anything else raises :class:`EnvelopeError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from core.errors import EnvelopeError
from core.types import VALID_FLAGS, RejectReason

ENVELOPE_VERSION: Final = 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

MIN_TS_US: Final = 0
"""1970-01-01T00:00:00Z, the earliest reading time any stage accepts: smart-city readings are never older."""
MAX_TS_US: Final = 32_503_680_000_000_000
"""3000-01-01T00:00:00Z (exclusive): anything later is a broken clock, not a reading."""
TS_RANGE_TEXT: Final = "1970-01-01T00:00:00Z <= time < 3000-01-01T00:00:00Z"


def ts_in_range(ts_us: int) -> bool:
    """Whether a reading time is inside the one range every stage (bridge, consumer, store) accepts."""
    return MIN_TS_US <= ts_us < MAX_TS_US


def to_us(ts: datetime) -> int:
    """Aware datetime -> integer microseconds since the epoch."""
    if ts.tzinfo is None:
        raise ValueError("naive datetime: every timestamp inside cityingest is timezone-aware UTC")
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    """Integer microseconds since the epoch -> aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True, slots=True)
class Reading:
    """One validated measurement in canonical units: ``value`` of ``metric`` at ``ts_us``."""

    metric: str
    ts_us: int
    value: float
    flags: int = 0

    @property
    def ts(self) -> datetime:
        """The reading's time as an aware UTC datetime."""
        return from_us(self.ts_us)


@dataclass(frozen=True, slots=True)
class Envelope:
    """The readings of one device message as they travel through Kafka."""

    device_id: str
    domain: str
    bridge_id: str
    received_us: int
    readings: tuple[Reading, ...]


def encode_envelope(env: Envelope) -> bytes:
    """Serialise an envelope to its compact JSON wire form."""
    return orjson.dumps(
        {
            "v": ENVELOPE_VERSION,
            "device": env.device_id,
            "domain": env.domain,
            "bridge": env.bridge_id,
            "received": env.received_us,
            "readings": [[r.metric, r.ts_us, r.value, r.flags] for r in env.readings],
        }
    )


def _fail(message: str, reason: RejectReason = RejectReason.ENVELOPE_UNDECODABLE) -> EnvelopeError:
    return EnvelopeError(reason, message)


def _nonempty_str(obj: dict[str, Any], field: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not value:
        raise _fail(f"envelope field {field!r} must be a non-empty string")
    return value


def decode_envelope(raw: bytes | None) -> Envelope:
    """Parse and validate a wire envelope; raise :class:`EnvelopeError` with a reason code otherwise."""
    if raw is None:
        raise _fail("record has no value")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"record value is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _fail("envelope must be a JSON object")
    version = obj.get("v")
    if version != ENVELOPE_VERSION:
        raise _fail(
            f"envelope version {version!r} is not supported (expected {ENVELOPE_VERSION})",
            RejectReason.ENVELOPE_UNSUPPORTED_VERSION,
        )
    device_id = _nonempty_str(obj, "device")
    domain = _nonempty_str(obj, "domain")
    bridge_id = _nonempty_str(obj, "bridge")
    received = obj.get("received")
    if type(received) is not int:
        raise _fail("envelope field 'received' must be integer microseconds")
    items = obj.get("readings")
    if not isinstance(items, list) or not items:
        raise _fail("envelope field 'readings' must be a non-empty list")
    readings: list[Reading] = []
    for i, item in enumerate(items):
        if not isinstance(item, list) or len(item) != 4:
            raise _fail(f"reading {i} must be [metric, ts_us, value, flags]")
        metric, ts_us, value, flags = item
        if not isinstance(metric, str) or not metric:
            raise _fail(f"reading {i}: metric must be a non-empty string")
        if type(ts_us) is not int:
            raise _fail(f"reading {i}: ts must be integer microseconds")
        if type(value) not in (int, float) or not math.isfinite(value):
            raise _fail(f"reading {i}: value must be a finite number")
        if type(flags) is not int or flags < 0 or flags & ~VALID_FLAGS:
            raise _fail(f"reading {i}: flags {flags!r} are not valid")
        readings.append(Reading(metric, ts_us, float(value), flags))
    return Envelope(device_id, domain, bridge_id, received, tuple(readings))
