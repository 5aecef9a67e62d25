"""Rendering readings as device payloads (single reading, batch, SenML pack) and malformed payloads.

Pure: the same inputs give the same bytes. The payload shapes are those the bridge accepts::

    {"metric": "water_flow", "value": 12.5, "ts": "2026-11-22T10:00:00Z", "unit": "m3/h"}
    {"readings": [{"metric": ..., "value": ..., "ts": ...}, ...]}
    [{"bn": "wat-north-0001/", "bt": 1795341600, "bver": 10}, {"n": "water_flow", "u": "m3/h", "v": 12.5}]
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from core.catalogue import Catalogue
from core.topics import telemetry_topic
from core.types import RejectReason
from simulator.model import Device, Shape, SimReading, TimeFormat

SENML_VERSION: Final = 10
# Always in the future for the bridge, whatever the wall clock: it rejects ts > now + 5 minutes.
FUTURE_TS_S: Final = 4_102_444_800  # 2100-01-01T00:00:00Z

MALFORMED_REASONS: Final[tuple[RejectReason, ...]] = (
    RejectReason.INVALID_JSON,
    RejectReason.UNKNOWN_SHAPE,
    RejectReason.UNKNOWN_METRIC,
    RejectReason.NON_NUMERIC_VALUE,
    RejectReason.MISSING_FIELD,
    RejectReason.DEVICE_MISMATCH,
    RejectReason.FUTURE_TIMESTAMP,
    RejectReason.BAD_TIMESTAMP,
    RejectReason.EMPTY_BATCH,
    RejectReason.UNKNOWN_DOMAIN,
    RejectReason.SENML_INVALID,
)
"""What the simulator breaks on purpose; each payload is invalid as a whole, for one reason only."""


def format_ts(ts_us: int, time_format: TimeFormat) -> str | int:
    """A timestamp as the device writes it: RFC 3339 (UTC, ``Z``) or epoch seconds or milliseconds."""
    if time_format == "epoch_s":
        return ts_us // 1_000_000
    if time_format == "epoch_ms":
        return ts_us // 1_000
    moment = datetime.fromtimestamp(ts_us // 1_000_000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _reading_obj(reading: SimReading, device: Device, units: Mapping[str, str]) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metric": reading.metric,
        "value": reading.value,
        "ts": format_ts(reading.ts_us, device.time_format),
    }
    if device.sends_units:
        obj["unit"] = units[reading.metric]
    return obj


def senml_pack(device: Device, readings: Sequence[SimReading], units: Mapping[str, str]) -> list[Any]:
    """An RFC 8428 pack: base name ``<device_id>/``, base time, ``s`` for counters and ``v`` for gauges."""
    base_s = readings[0].ts_us // 1_000_000
    pack: list[dict[str, Any]] = [{"bn": f"{device.device_id}/", "bt": base_s, "bver": SENML_VERSION}]
    for reading in readings:
        record: dict[str, Any] = {"n": reading.metric}
        if device.sends_units:
            record["u"] = units[reading.metric]
        record["s" if reading.counter else "v"] = reading.value
        record["t"] = reading.ts_us // 1_000_000 - base_s
        pack.append(record)
    return pack


def render(device: Device, shape: Shape, readings: Sequence[SimReading], units: Mapping[str, str]) -> bytes:
    """The payload bytes of ``readings`` in ``shape`` (a single reading needs exactly one)."""
    if shape == "single":
        if len(readings) != 1:
            raise ValueError("a single-reading payload carries exactly one reading")
        return orjson.dumps(_reading_obj(readings[0], device, units))
    if shape == "batch":
        return orjson.dumps({"readings": [_reading_obj(r, device, units) for r in readings]})
    return orjson.dumps(senml_pack(device, readings, units))


def catalogue_units(catalogue: Catalogue) -> dict[str, str]:
    """Metric name -> canonical unit."""
    return {name: spec.unit for name, spec in catalogue.items()}


def malformed(
    reason: RejectReason,
    device: Device,
    other: Device,
    reading: SimReading,
    *,
    prefix: str,
    units: Mapping[str, str],
    rng: random.Random,
) -> tuple[str, bytes]:
    """A payload (and its topic) from ``device`` that the bridge must reject, and only for ``reason``.

    ``reading`` is a valid reading the payload is built around; ``other`` is another device, used
    for the device mismatch.
    """
    topic = telemetry_topic(prefix, device.domain, device.device_id)
    good = {"metric": reading.metric, "value": reading.value, "ts": format_ts(reading.ts_us, "rfc3339")}
    doc: Any
    if reason == RejectReason.INVALID_JSON:
        text = orjson.dumps(good)
        return topic, text[: rng.randrange(1, len(text) - 1)]
    if reason == RejectReason.UNKNOWN_SHAPE:
        doc = {"hello": device.device_id, "temperature_reading": reading.value}
    elif reason == RejectReason.UNKNOWN_METRIC:
        doc = {**good, "metric": f"no_such_metric_{rng.randrange(1000)}"}
    elif reason == RejectReason.NON_NUMERIC_VALUE:
        variant = rng.randrange(3)
        if variant == 0:
            doc = {**good, "value": rng.choice(["high", "n/a", "twelve"])}
        else:
            # SenML: a number written as a string, or a string value (vs) where a number is expected.
            doc = senml_pack(device, [reading], units)
            value_key = "s" if reading.counter else "v"
            if variant == 1:
                doc[1][value_key] = str(reading.value)
            else:
                del doc[1][value_key]
                doc[1]["vs"] = str(reading.value)
    elif reason == RejectReason.MISSING_FIELD:
        doc = {"ts": good["ts"], "metric": reading.metric}
    elif reason == RejectReason.DEVICE_MISMATCH:
        doc = senml_pack(other, [reading], units)
    elif reason == RejectReason.FUTURE_TIMESTAMP:
        doc = {**good, "ts": FUTURE_TS_S + rng.randrange(86_400)}
    elif reason == RejectReason.BAD_TIMESTAMP:
        doc = {**good, "ts": rng.choice(["yesterday", "2026-13-45T99:00:00Z", "not-a-time"])}
    elif reason == RejectReason.EMPTY_BATCH:
        doc = {"readings": []}
    elif reason == RejectReason.UNKNOWN_DOMAIN:
        topic = telemetry_topic(prefix, "spaceship", device.device_id)
        doc = good
    elif reason == RejectReason.SENML_INVALID:
        doc = senml_pack(device, [reading], units)
        # A base time as a string: it would shift every record, so the whole pack is invalid.
        doc[0]["bt"] = format_ts(reading.ts_us, "rfc3339")
    else:
        raise ValueError(f"the simulator does not generate {reason!r} payloads")
    return topic, orjson.dumps(doc)
