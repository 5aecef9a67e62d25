"""Rendering readings as device payloads: single reading, batch, SenML pack.

Pure: the same inputs give the same bytes. The payload shapes are those the bridge accepts (the
payloads it must reject are built in :mod:`simulator.malformed`)::

    {"metric": "water_flow", "value": 12.5, "ts": "2026-11-22T10:00:00Z", "unit": "m3/h"}
    {"readings": [{"metric": ..., "value": ..., "ts": ...}, ...]}
    [{"bn": "wat-north-0001/", "bt": 1795341600, "bver": 10}, {"n": "water_flow", "u": "m3/h", "v": 12.5}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from core.catalogue import Catalogue
from simulator.model import Device, Shape, SimReading, TimeFormat

SENML_VERSION: Final = 10


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
        "value": reading.payload_value,
        "ts": format_ts(reading.ts_us, device.time_format),
    }
    unit = unit_of(reading, device, units)
    if unit is not None:
        obj["unit"] = unit
    return obj


def unit_of(reading: SimReading, device: Device, units: Mapping[str, str]) -> str | None:
    """The unit written next to the value: a non-canonical one always (else it would be misread)."""
    if reading.unit is not None:
        return reading.unit
    return units[reading.metric] if device.sends_units else None


def senml_pack(device: Device, readings: Sequence[SimReading], units: Mapping[str, str]) -> list[Any]:
    """An RFC 8428 pack: base name ``<device_id>/``, base time, ``s`` for counters and ``v`` for gauges."""
    base_s = readings[0].ts_us // 1_000_000
    pack: list[dict[str, Any]] = [{"bn": f"{device.device_id}/", "bt": base_s, "bver": SENML_VERSION}]
    for reading in readings:
        record: dict[str, Any] = {"n": reading.metric}
        unit = unit_of(reading, device, units)
        if unit is not None:
            record["u"] = unit
        record["s" if reading.counter else "v"] = reading.payload_value
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
