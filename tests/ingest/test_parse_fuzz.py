"""Hypothesis-generated payloads: the parser never crashes and everything it accepts is well formed."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.catalogue import load_catalogue
from core.errors import RejectedPayload
from core.readings import decode_envelope, encode_envelope, to_us
from core.types import RejectReason
from ingest.parse import ParseResult, PayloadParser

NOW_US = to_us(datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC))
CATALOGUE = load_catalogue()
PARSER = PayloadParser(CATALOGUE, bridge_id="fuzz", max_payload_bytes=65_536)
REASONS = {r.value for r in RejectReason}
METRICS = sorted(CATALOGUE)
UNITS = sorted({s.unit for s in CATALOGUE.values()} | {src for src, _ in CATALOGUE.conversions()})
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)
timestamps = (
    st.none()
    | st.floats(min_value=-1e15, max_value=1e15)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z"))
    | st.text(max_size=30)
)
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(2**80), max_value=2**80)
readings = st.fixed_dictionaries(
    {"metric": st.sampled_from([*METRICS, "unknown", ""]) | json_scalars},
    optional={
        "value": numbers | json_values,
        "ts": timestamps | json_values,
        "unit": st.sampled_from(UNITS) | json_values,
    },
)
senml_records = st.fixed_dictionaries(
    {},
    optional={
        "bn": st.sampled_from(["", "urn:dev:d-1:", "d-1/", "urn:dev:other:"]) | json_scalars,
        "bt": st.floats(min_value=-1e10, max_value=3e9) | json_scalars,
        "bu": st.sampled_from(UNITS) | json_scalars,
        "bv": numbers,
        "bs": numbers,
        "bver": st.integers(min_value=0, max_value=12) | json_scalars,
        "n": st.sampled_from([*METRICS, "x y", "d-1/water_flow"]) | json_scalars,
        "u": st.sampled_from(UNITS) | json_scalars,
        "v": numbers | json_scalars,
        "s": numbers | json_scalars,
        "t": st.floats(min_value=-1e9, max_value=3e9) | json_scalars,
        "vs": st.text(max_size=5),
        "ut": st.integers(),
    },
)
topics = st.sampled_from(
    ["city/water/d-1/telemetry", "city/power/d-1/telemetry", "city/gas/d-1/telemetry", "city/water/d-1"]
) | st.text(max_size=40)


def _encode(doc: Any) -> bytes:
    # allow_nan: devices with naive serialisers send NaN and Infinity; the parser must cope.
    return json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")


def check(payload: bytes, topic: str) -> ParseResult | None:
    """Parse and assert the invariants of both outcomes."""
    try:
        result = PARSER.parse(payload, topic, NOW_US)
    except RejectedPayload as exc:
        refused: RejectedPayload | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.reason in REASONS
        assert refused.message
        return None
    assert result.envelope is not None or result.rejections
    for rejection in result.rejections:
        assert rejection.reason in REASONS
        assert rejection.message
    if result.envelope is not None:
        assert result.envelope.readings
        assert decode_envelope(encode_envelope(result.envelope)) == result.envelope
        for reading in result.envelope.readings:
            assert reading.metric in CATALOGUE
            assert math.isfinite(reading.value)
            assert reading.ts_us <= NOW_US + 300_000_000
    return result


@FUZZ
@given(payload=st.binary(max_size=300), topic=topics)
def test_arbitrary_bytes_never_crash(payload: bytes, topic: str) -> None:
    check(payload, topic)


@FUZZ
@given(doc=json_values)
def test_arbitrary_json_never_crashes(doc: Any) -> None:
    check(_encode(doc), "city/water/d-1/telemetry")


@FUZZ
@given(reading=readings)
def test_single_readings_never_crash(reading: dict[str, Any]) -> None:
    check(_encode(reading), "city/water/d-1/telemetry")


@FUZZ
@given(
    items=st.lists(readings | json_values, max_size=10), device=st.none() | st.sampled_from(["d-1", "d-2"])
)
def test_batches_account_for_every_reading(items: list[Any], device: str | None) -> None:
    doc: dict[str, Any] = {"readings": items} if device is None else {"device": device, "readings": items}
    result = check(_encode(doc), "city/water/d-1/telemetry")
    if result is not None:
        accepted = 0 if result.envelope is None else len(result.envelope.readings)
        assert accepted + len(result.rejections) == len(items)
        assert sorted(r.index for r in result.rejections) == [r.index for r in result.rejections]


@FUZZ
@given(pack=st.lists(senml_records | json_values, max_size=10))
def test_senml_packs_never_crash(pack: list[Any]) -> None:
    result = check(_encode(pack), "city/water/d-1/telemetry")
    if result is not None:
        accepted = 0 if result.envelope is None else len(result.envelope.readings)
        assert accepted + len(result.rejections) <= len(pack)


@FUZZ
@given(
    metric=st.sampled_from(METRICS),
    value=st.floats(min_value=-1e6, max_value=1e6),
    age_s=st.integers(min_value=0, max_value=10**8),
)
def test_valid_readings_are_always_accepted(metric: str, value: float, age_s: int) -> None:
    ts = NOW_US // 1_000_000 - age_s
    payload = orjson.dumps({"metric": metric, "value": value, "ts": ts, "unit": CATALOGUE[metric].unit})
    result = check(payload, "city/water/d-1/telemetry")
    assert result is not None
    assert result.envelope is not None
    (reading,) = result.envelope.readings
    assert (reading.metric, reading.value, reading.ts_us) == (metric, value, ts * 1_000_000)
    spec = CATALOGUE[metric]
    in_range = (spec.min is None or value >= spec.min) and (spec.max is None or value <= spec.max)
    assert reading.flags == (0 if in_range else 1)
