"""Payloads the bridge must reject: every reason a device can cause, in the ways devices cause them.

Pure: the same inputs and random state give the same bytes. Each payload is rejected as a whole, or
is a batch or SenML pack whose only reading is rejected: either way it becomes exactly one dead letter,
for exactly the recorded reason, and stores nothing.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from core.catalogue import Catalogue
from core.topics import telemetry_topic
from core.types import RejectReason
from simulator.model import Device, SimReading
from simulator.payloads import SENML_VERSION, catalogue_units, format_ts, senml_pack
from simulator.units import alternative_units

# Always in the future for the bridge, whatever the wall clock: it rejects ts > now + 5 minutes.
FUTURE_TS_S: Final = 4_102_444_800  # 2100-01-01T00:00:00Z
OVERLONG_ID: Final = 130
"""Hex digits appended to a device id to make it longer than the bridge's 128 characters."""
_LITERAL: Final = "\x1fliteral\x1f"
"""Placeholder for a number JSON cannot hold (NaN, Infinity), swapped in after serialising."""


@dataclass(frozen=True, slots=True)
class _Case:
    """One malformed payload to build: from ``device``, around one of its valid readings."""

    device: Device
    other: Device
    """Another device, for the payloads that speak for someone else."""
    reading: SimReading
    prefix: str
    units: Mapping[str, str]
    foreign_units: tuple[str, ...]
    """Units the bridge cannot convert to the reading's metric."""
    max_payload_bytes: int
    rng: random.Random

    @property
    def topic(self) -> str:
        return telemetry_topic(self.prefix, self.device.domain, self.device.device_id)

    @property
    def good(self) -> dict[str, Any]:
        r = self.reading
        return {"metric": r.metric, "value": r.value, "ts": format_ts(r.ts_us, "rfc3339")}

    @property
    def value_key(self) -> str:
        return "s" if self.reading.counter else "v"

    def pack(self, device: Device | None = None) -> list[Any]:
        return senml_pack(device or self.device, [self.reading], self.units)


Built = tuple[str, bytes]


def _payload_too_large(c: _Case) -> Built:
    # A device flushing a stuck buffer: one reading over and over. Were the bridge's limit higher than
    # ours, the copies would all be the same, already sent reading, so the store totals would not move.
    item = orjson.dumps(c.good)
    copies = c.max_payload_bytes // len(item) + 1
    return c.topic, b'{"readings":[' + b",".join([item] * copies) + b"]}"


def _not_utf8(c: _Case) -> Built:
    if c.rng.randrange(2) == 0:
        # A gateway that writes its site name in Latin-1.
        doc = {**c.good, "site": f"{c.device.district} Straße"}
        return c.topic, json.dumps(doc, ensure_ascii=False).encode("latin-1")
    # A gateway that writes UTF-16 with a byte order mark.
    return c.topic, orjson.dumps(c.good).decode().encode("utf-16")


def _invalid_json(c: _Case) -> Built:
    text = orjson.dumps(c.good)
    if c.rng.randrange(2) == 0:
        # Cut short by a buffer too small for the message.
        return c.topic, text[: c.rng.randrange(1, len(text) - 1)]
    # Two messages written into one buffer.
    return c.topic, text + text


def _unknown_shape(c: _Case) -> Built:
    variant = c.rng.randrange(3)
    if variant == 0:
        doc: Any = {"hello": c.device.device_id, "temperature_reading": c.reading.value}
    elif variant == 1:
        doc = c.reading.value  # firmware that publishes the bare number
    else:
        doc = {"readings": c.good}  # one reading where a list is expected
    return c.topic, orjson.dumps(doc)


def _bad_topic(c: _Case) -> Built:
    # Under the bridge's subscription <prefix>/#: the bridge sees and must refuse these.
    if c.rng.randrange(2) == 0:
        device_id = ""  # a topic template whose device variable was never filled in
    else:
        serial = "".join(c.rng.choices("0123456789abcdef", k=OVERLONG_ID))
        device_id = f"{c.device.device_id}-{serial}"
    return telemetry_topic(c.prefix, c.device.domain, device_id), orjson.dumps(c.good)


def _unknown_domain(c: _Case) -> Built:
    return telemetry_topic(c.prefix, "spaceship", c.device.device_id), orjson.dumps(c.good)


def _device_mismatch(c: _Case) -> Built:
    if c.rng.randrange(2) == 0:
        return c.topic, orjson.dumps(c.pack(c.other))
    return c.topic, orjson.dumps({**c.good, "device_id": c.other.device_id})


def _empty_batch(c: _Case) -> Built:
    variant = c.rng.randrange(3)
    if variant == 0:
        doc: Any = {"readings": []}
    elif variant == 1:
        doc = []
    else:
        doc = c.pack()[:1]  # base fields only
    return c.topic, orjson.dumps(doc)


def _missing_field(c: _Case) -> Built:
    variant = c.rng.randrange(3)
    if variant == 0:
        doc: Any = {"ts": c.good["ts"], "metric": c.reading.metric}
    elif variant == 1:
        doc = {"ts": c.good["ts"], "value": c.reading.value}
    else:
        doc = c.pack()
        del doc[1]["n"]  # the name resolves to the base name "<device_id>/", which names no metric
    return c.topic, orjson.dumps(doc)


def _unknown_metric(c: _Case) -> Built:
    variant = c.rng.randrange(3)
    name = c.reading.metric.upper()  # a device spelling the name its own way
    if variant == 0 or name in c.units:
        name = f"no_such_metric_{c.rng.randrange(1000)}"
    if variant == 2:
        doc: Any = c.pack()
        doc[1]["n"] = name
    else:
        doc = {**c.good, "metric": name}
    return c.topic, orjson.dumps(doc)


def _non_numeric_value(c: _Case) -> Built:
    variant = c.rng.randrange(3)
    if variant == 0:
        return c.topic, orjson.dumps({**c.good, "value": c.rng.choice(["high", "n/a", "twelve"])})
    # SenML: a number written as a string, or a string value (vs) where a number is expected.
    doc = c.pack()
    if variant == 1:
        doc[1][c.value_key] = str(c.reading.value)
    else:
        del doc[1][c.value_key]
        doc[1]["vs"] = str(c.reading.value)
    return c.topic, orjson.dumps(doc)


def _non_finite_value(c: _Case) -> Built:
    # Serialisers that write NaN and Infinity (and 1e999, which no float holds) as bare words.
    literal = c.rng.choice(("NaN", "Infinity", "-Infinity", "1e999"))
    doc: Any
    if c.rng.randrange(2) == 0:
        doc = {**c.good, "value": _LITERAL}
    else:
        doc = c.pack()
        doc[1][c.value_key] = _LITERAL
    return c.topic, orjson.dumps(doc).replace(orjson.dumps(_LITERAL), literal.encode())


def _unit_mismatch(c: _Case) -> Built:
    variant = c.rng.randrange(3)
    unit = c.rng.choice(c.foreign_units)
    if variant == 0:
        return c.topic, orjson.dumps({**c.good, "unit": unit})
    if variant == 1:
        doc = c.pack()
        doc[1]["u"] = unit
        return c.topic, orjson.dumps(doc)
    # A numeric unit code where the unit's name is expected.
    return c.topic, orjson.dumps({**c.good, "unit": c.rng.randrange(1, 100)})


def _bad_timestamp(c: _Case) -> Built:
    variant = c.rng.randrange(5)
    ts_us = c.reading.ts_us
    doc: Any = c.good
    if variant == 0:
        doc = {**doc, "ts": c.rng.choice(["yesterday", "2026-13-45T99:00:00Z", "not-a-time"])}
    elif variant == 1:
        doc = {**doc, "ts": max(ts_us, 10**14)}  # microseconds: neither epoch seconds nor milliseconds
    elif variant == 2:
        doc = {**doc, "ts": -(ts_us // 1_000_000)}  # a signed overflow
    elif variant == 3:
        naive = datetime.fromtimestamp(ts_us // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        doc = {**doc, "ts": naive}  # local time without an offset
    else:
        doc = c.pack()
        doc[1]["t"] = str(doc[1]["t"])
    return c.topic, orjson.dumps(doc)


def _future_timestamp(c: _Case) -> Built:
    future = FUTURE_TS_S + c.rng.randrange(86_400)
    if c.rng.randrange(2) == 0:
        return c.topic, orjson.dumps({**c.good, "ts": future})
    doc = c.pack()
    doc[0]["bt"] = future
    return c.topic, orjson.dumps(doc)


def _senml_invalid(c: _Case) -> Built:
    variant = c.rng.randrange(3)
    doc = c.pack()
    if variant == 0:
        # A base time as a string: it would shift every record, so the whole pack is invalid.
        doc[0]["bt"] = format_ts(c.reading.ts_us, "rfc3339")
    elif variant == 1:
        doc[1]["tz_"] = "CET"  # a must-understand extension the bridge does not know
    elif c.reading.counter:
        doc[0]["bn"] = 42  # a base name that is not a string
    else:
        doc[1]["s"] = doc[1].pop("v")  # a sum, which only counters have
    return c.topic, orjson.dumps(doc)


def _senml_unsupported_version(c: _Case) -> Built:
    doc = c.pack()
    doc[0]["bver"] = c.rng.randint(SENML_VERSION + 1, SENML_VERSION + 3)
    return c.topic, orjson.dumps(doc)


_BUILDERS: Final[dict[RejectReason, Callable[[_Case], Built]]] = {
    RejectReason.PAYLOAD_TOO_LARGE: _payload_too_large,
    RejectReason.NOT_UTF8: _not_utf8,
    RejectReason.INVALID_JSON: _invalid_json,
    RejectReason.UNKNOWN_SHAPE: _unknown_shape,
    RejectReason.BAD_TOPIC: _bad_topic,
    RejectReason.UNKNOWN_DOMAIN: _unknown_domain,
    RejectReason.DEVICE_MISMATCH: _device_mismatch,
    RejectReason.EMPTY_BATCH: _empty_batch,
    RejectReason.MISSING_FIELD: _missing_field,
    RejectReason.UNKNOWN_METRIC: _unknown_metric,
    RejectReason.NON_NUMERIC_VALUE: _non_numeric_value,
    RejectReason.NON_FINITE_VALUE: _non_finite_value,
    RejectReason.UNIT_MISMATCH: _unit_mismatch,
    RejectReason.BAD_TIMESTAMP: _bad_timestamp,
    RejectReason.FUTURE_TIMESTAMP: _future_timestamp,
    RejectReason.SENML_INVALID: _senml_invalid,
    RejectReason.SENML_UNSUPPORTED_VERSION: _senml_unsupported_version,
}
MALFORMED_REASONS: Final[tuple[RejectReason, ...]] = tuple(_BUILDERS)
"""Every reason an MQTT message can be rejected for; the simulator sends payloads for each."""


class MalformedPayloads:
    """Builds the malformed payloads of one simulation."""

    def __init__(self, catalogue: Catalogue, *, prefix: str, max_payload_bytes: int) -> None:
        self._units = catalogue_units(catalogue)
        self._prefix = prefix
        self._max_payload_bytes = max_payload_bytes
        known = set(self._units.values()) | {source for source, _ in catalogue.conversions()}
        self._foreign = {
            metric: tuple(sorted(known - {unit} - {c.source for c in alternative_units(catalogue, metric)}))
            for metric, unit in self._units.items()
        }

    def build(
        self, reason: RejectReason, device: Device, other: Device, reading: SimReading, rng: random.Random
    ) -> tuple[str, bytes]:
        """The topic and payload from ``device``, built around its valid ``reading``, that the bridge
        must dead-letter for ``reason`` and nothing else; ``other`` is another device."""
        builder = _BUILDERS.get(reason)
        if builder is None:
            raise ValueError(f"the simulator does not generate {reason!r} payloads")
        foreign = self._foreign[reading.metric] or ("furlong",)
        case = _Case(device, other, reading, self._prefix, self._units, foreign, self._max_payload_bytes, rng)
        return builder(case)
