"""Shared vocabulary: domains, metric kinds, provenance, reading flags and dead-letter reason codes."""

from __future__ import annotations

import enum
from typing import Final, Literal

MetricKind = Literal["gauge", "counter"]

DEFAULT_DOMAINS: Final[tuple[str, ...]] = ("building", "water", "power", "environment")


class Provenance(enum.StrEnum):
    """Who operates a device; statisticians disaggregate by it."""

    OFFICIAL = "official"
    CITIZEN = "citizen"
    PARTNER = "partner"
    UNKNOWN = "unknown"


class DeviceStatus(enum.StrEnum):
    """Registry status of a device; unknown devices register themselves as ``unregistered``."""

    ACTIVE = "active"
    INACTIVE = "inactive"
    UNREGISTERED = "unregistered"


MAX_DEVICE_ID_LENGTH: Final = 128
"""Longest device id, in characters, that any stage accepts (topic, envelope, store, registry, API)."""
MAX_NAME_LENGTH: Final = 200
"""Longest metric or domain name the store accepts (keeps its index entries small)."""


class ReadingFlag(enum.IntFlag):
    """Quality flags carried by every reading, from the bridge into the store."""

    NONE = 0
    OUT_OF_RANGE = 1
    """Value outside the metric's plausible range: kept, counted as flagged."""
    NO_TIMESTAMP = 2
    """The device sent no time; the bridge's receive time was used."""
    UNIT_CONVERTED = 4
    """The device sent another unit, converted to the canonical one."""


VALID_FLAGS: Final = int(ReadingFlag.OUT_OF_RANGE | ReadingFlag.NO_TIMESTAMP | ReadingFlag.UNIT_CONVERTED)
"""Every flag bit a reading may carry; any other bit makes a record undecodable."""
FLAGGED_MASK: Final = int(ReadingFlag.OUT_OF_RANGE | ReadingFlag.NO_TIMESTAMP)
"""Flags that make a reading count as ``flagged``; UNIT_CONVERTED is information, not a quality issue."""

RollupLevel = Literal["hourly", "daily", "monthly"]
ROLLUP_TABLES: Final[dict[RollupLevel, str]] = {
    "hourly": "readings_hourly",
    "daily": "readings_daily",
    "monthly": "readings_monthly",
}
"""The rollup tables the consumers maintain and the API reads (migrations/0004_rollups.sql)."""


class RejectReason(enum.StrEnum):
    """Machine-readable reason codes of dead-letter records."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_UTF8 = "not_utf8"
    INVALID_JSON = "invalid_json"
    UNKNOWN_SHAPE = "unknown_shape"
    BAD_TOPIC = "bad_topic"
    UNKNOWN_DOMAIN = "unknown_domain"
    DEVICE_MISMATCH = "device_mismatch"
    EMPTY_BATCH = "empty_batch"
    MISSING_FIELD = "missing_field"
    UNKNOWN_METRIC = "unknown_metric"
    NON_NUMERIC_VALUE = "non_numeric_value"
    NON_FINITE_VALUE = "non_finite_value"
    UNIT_MISMATCH = "unit_mismatch"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    SENML_INVALID = "senml_invalid"
    SENML_UNSUPPORTED_VERSION = "senml_unsupported_version"
    INTERNAL_ERROR = "internal_error"
    """A bug of ours hit this payload: it is kept in the dead-letter topic for replay once fixed."""
    RETAINED = "retained"
    """A broker's stored retained copy, sent again on (re)subscribe: never a new reading, so never stored."""
    RECORD_TOO_LARGE = "record_too_large"
    """Kafka refused a record of this message for good as too large; the dead letter keeps what fits."""
    STORE_REJECTED = "store_rejected"
    """The database refused a record's readings; the consumer dead-letters it and moves on."""
    ENVELOPE_UNDECODABLE = "envelope_undecodable"
    ENVELOPE_UNSUPPORTED_VERSION = "envelope_unsupported_version"
