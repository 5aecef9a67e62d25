"""Every payload shape the bridge accepts and every reason it rejects one for."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import orjson
import pytest

from core.catalogue import load_catalogue
from core.errors import RejectedPayload
from core.readings import Envelope, Reading, decode_envelope, encode_envelope, to_us
from core.types import ReadingFlag, RejectReason
from ingest.parse import ParseResult, PayloadParser

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
NOW_US = to_us(NOW)
TOPIC = "city/water/meter-7/telemetry"
F = ReadingFlag


@pytest.fixture(scope="module")
def parser() -> PayloadParser:
    return PayloadParser(load_catalogue(), bridge_id="bridge-t", max_payload_bytes=4096)


def parse(parser: PayloadParser, payload: object, topic: str = TOPIC) -> ParseResult:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return parser.parse(raw, topic, NOW_US)


def readings(result: ParseResult) -> tuple[Reading, ...]:
    assert result.envelope is not None
    return result.envelope.readings


def rejected(parser: PayloadParser, payload: object, topic: str = TOPIC) -> RejectedPayload:
    with pytest.raises(RejectedPayload) as info:
        parse(parser, payload, topic)
    return info.value


# --- accepted shapes -------------------------------------------------------------------------


def test_single_reading(parser: PayloadParser) -> None:
    result = parse(
        parser, {"metric": "water_flow", "value": 12.5, "ts": "2026-11-22T09:59:00Z", "unit": "m3/h"}
    )
    assert result.envelope == Envelope(
        "meter-7", "water", "bridge-t", NOW_US, (Reading("water_flow", NOW_US - 60_000_000, 12.5, 0),)
    )
    assert result.rejections == ()
    assert (result.domain, result.device_id) == ("water", "meter-7")


def test_envelope_round_trips_through_the_wire_format(parser: PayloadParser) -> None:
    result = parse(
        parser, {"readings": [{"metric": "water_flow", "value": 3}, {"metric": "chlorine", "value": 0.4}]}
    )
    assert result.envelope is not None
    assert decode_envelope(encode_envelope(result.envelope)) == result.envelope


@pytest.mark.parametrize(
    ("ts", "expected_us"),
    [
        ("2026-11-22T09:00:00Z", NOW_US - 3_600_000_000),
        ("2026-11-22T10:00:00+01:00", NOW_US - 3_600_000_000),
        ("2026-11-22T09:00:00.123456Z", NOW_US - 3_600_000_000 + 123_456),
        (NOW.timestamp() - 10, NOW_US - 10_000_000),
        (int(NOW.timestamp()) - 10, NOW_US - 10_000_000),
        (int(NOW.timestamp() * 1000) - 1500, NOW_US - 1_500_000),
        (NOW.timestamp() * 1000 - 0.5, NOW_US - 500),
    ],
)
def test_timestamp_forms(parser: PayloadParser, ts: object, expected_us: int) -> None:
    (reading,) = readings(parse(parser, {"metric": "water_flow", "value": 1, "ts": ts}))
    assert reading.ts_us == expected_us
    assert reading.flags == 0


@pytest.mark.parametrize("ts", ["1970-01-01T00:00:00Z", "1970-01-01T01:00:00+01:00", 0, 0.0])
def test_the_first_moment_of_the_range_is_accepted(parser: PayloadParser, ts: object) -> None:
    (reading,) = readings(parse(parser, {"metric": "water_flow", "value": 1, "ts": ts}))
    assert reading.ts_us == 0


@pytest.mark.parametrize(
    "payload",
    [
        b'{"metric": "water_flow", "value": 1' + b"0" * 400 + b"}",
        b'{"metric": "water_flow", "value": -1' + b"0" * 400 + b', "unit": "l/s"}',
        b'[{"n": "water_flow", "v": 1' + b"0" * 400 + b"}]",
        b'[{"bv": 1.5, "n": "water_flow", "v": 1' + b"0" * 400 + b"}]",
        b'[{"bs": 1.5, "n": "water_volume_m3", "s": 1' + b"0" * 400 + b"}]",
        b'[{"n": "water_flow", "v": 1e308, "u": "l/s"}]',
    ],
)
def test_integers_beyond_float_range_are_non_finite_values(parser: PayloadParser, payload: bytes) -> None:
    try:
        result = parse(parser, payload)
    except RejectedPayload as exc:
        reason: str = exc.reason
    else:
        assert result.envelope is None
        (rejection,) = result.rejections
        reason = rejection.reason
    assert reason == "non_finite_value"


def test_missing_timestamp_gets_receive_time_and_flag(parser: PayloadParser) -> None:
    (reading,) = readings(parse(parser, {"metric": "water_flow", "value": 1}))
    assert reading.ts_us == NOW_US
    assert reading.flags == F.NO_TIMESTAMP


def test_small_future_skew_is_accepted(parser: PayloadParser) -> None:
    (reading,) = readings(parse(parser, {"metric": "water_flow", "value": 1, "ts": "2026-11-22T10:04:59Z"}))
    assert reading.ts_us == NOW_US + 299_000_000


@pytest.mark.parametrize(
    ("metric", "value", "unit", "expected"),
    [
        ("energy_import_kwh", 1500, "Wh", 1.5),
        ("temperature", 68, "degF", 20.0),
        ("water_flow", 2, "l/s", 7.2),
        ("water_pressure", 350, "kPa", 3.5),
    ],
)
def test_unit_conversion_flags_the_reading(
    parser: PayloadParser, metric: str, value: float, unit: str, expected: float
) -> None:
    (reading,) = readings(parse(parser, {"metric": metric, "value": value, "unit": unit, "ts": 1.7e9}))
    assert reading.value == pytest.approx(expected)
    assert reading.flags == F.UNIT_CONVERTED


def test_unit_alias_and_canonical_unit_are_not_flagged(parser: PayloadParser) -> None:
    got = readings(
        parse(
            parser,
            {
                "readings": [
                    {"metric": "temperature", "value": 21.5, "unit": "degC", "ts": 1.7e9},
                    {"metric": "temperature", "value": 21.5, "unit": "Cel", "ts": 1.7e9},
                ]
            },
        )
    )
    assert [(r.value, r.flags) for r in got] == [(21.5, 0), (21.5, 0)]


def test_out_of_range_is_kept_and_flagged(parser: PayloadParser) -> None:
    got = readings(
        parse(
            parser,
            {
                "readings": [
                    {"metric": "water_flow", "value": -1, "ts": 1.7e9},
                    {"metric": "temperature", "value": 81, "ts": 1.7e9},
                    {"metric": "temperature", "value": 80, "ts": 1.7e9},
                    {"metric": "energy_import_kwh", "value": 1e12, "ts": 1.7e9},
                ]
            },
        )
    )
    assert [r.flags for r in got] == [F.OUT_OF_RANGE, F.OUT_OF_RANGE, 0, 0]


def test_flags_combine(parser: PayloadParser) -> None:
    (reading,) = readings(parse(parser, {"metric": "temperature", "value": 300, "unit": "degF"}))
    assert reading.flags == F.OUT_OF_RANGE | F.UNIT_CONVERTED | F.NO_TIMESTAMP


def test_batch_keeps_good_readings_and_rejects_bad_ones(parser: PayloadParser) -> None:
    result = parse(
        parser,
        {
            "device": "meter-7",
            "readings": [
                {"metric": "water_flow", "value": 1, "ts": 1.7e9},
                {"metric": "water_flow", "value": "high", "ts": 1.7e9},
                {"metric": "chlorine", "value": 0.5, "ts": 1.7e9},
                {"metric": "nope", "value": 1},
            ],
        },
    )
    assert [r.metric for r in readings(result)] == ["water_flow", "chlorine"]
    assert [(r.reason, r.index) for r in result.rejections] == [
        ("non_numeric_value", 1),
        ("unknown_metric", 3),
    ]
    assert orjson.loads(result.rejections[0].item) == {"metric": "water_flow", "value": "high", "ts": 1.7e9}
    assert result.rejections[0].message.startswith("reading 1:")


def test_batch_with_only_bad_readings_has_no_envelope(parser: PayloadParser) -> None:
    result = parse(parser, {"readings": [{"metric": "nope", "value": 1}, 7]})
    assert result.envelope is None
    assert [r.reason for r in result.rejections] == ["unknown_metric", "unknown_shape"]


def test_matching_device_field_is_accepted(parser: PayloadParser) -> None:
    result = parse(parser, {"metric": "water_flow", "value": 1, "device_id": "meter-7"})
    assert len(readings(result)) == 1


def test_lenient_json_rejects_only_the_non_finite_reading(parser: PayloadParser) -> None:
    raw = b'{"readings": [{"metric": "water_flow", "value": NaN}, {"metric": "water_flow", "value": 1e400},'
    raw += b' {"metric": "water_flow", "value": 2}]}'
    result = parse(parser, raw)
    assert [r.value for r in readings(result)] == [2.0]
    assert [r.reason for r in result.rejections] == ["non_finite_value", "non_finite_value"]
    assert b"NaN" in result.rejections[0].item


def test_conversion_overflow_is_non_finite(parser: PayloadParser) -> None:
    exc = rejected(
        parser, {"metric": "pm10", "value": 1e300, "unit": "kg/m3"}, "city/environment/s-1/telemetry"
    )
    assert exc.reason == "non_finite_value"


def test_huge_integer_value_is_non_finite(parser: PayloadParser) -> None:
    exc = rejected(parser, b'{"metric": "water_flow", "value": 1' + b"0" * 400 + b"}")
    assert exc.reason == "non_finite_value"


def test_non_utf8_payload(parser: PayloadParser) -> None:
    assert rejected(parser, b'{"metric": "\xff\xfe"}').reason == "not_utf8"


def test_topic_prefix_is_configurable() -> None:
    p = PayloadParser(load_catalogue(), bridge_id="b", topic_prefix="acme/city", domains=("water",))
    assert p.parse_topic("acme/city/water/d/telemetry") == ("water", "d")
    with pytest.raises(RejectedPayload):
        p.parse_topic("city/water/d/telemetry")
    assert p.device_of("acme/city/water/d/telemetry") == "d"
    assert p.device_of("acme/city/water/d") is None


# --- every rejection reason ------------------------------------------------------------------

OK = {"metric": "water_flow", "value": 1.0}
WHOLE_PAYLOAD_CASES: list[tuple[str, object, str]] = [
    ("payload_too_large", b"[" + b" " * 5000 + b"]", TOPIC),
    ("not_utf8", b"\xc3\x28", TOPIC),
    ("invalid_json", b'{"metric": ', TOPIC),
    ("invalid_json", b"", TOPIC),
    ("invalid_json", b"[" * 1500 + b"]" * 1500, TOPIC),
    ("unknown_shape", {"hello": "world"}, TOPIC),
    ("unknown_shape", 42, TOPIC),
    ("unknown_shape", "water_flow=1", TOPIC),
    ("unknown_shape", None, TOPIC),
    ("unknown_shape", {"readings": {"metric": "water_flow"}}, TOPIC),
    ("bad_topic", OK, "city/water/meter-7"),
    ("bad_topic", OK, "city/water/meter-7/status"),
    ("bad_topic", OK, "town/water/meter-7/telemetry"),
    ("bad_topic", OK, "city/water//telemetry"),
    ("bad_topic", OK, "city/water/a/b/telemetry"),
    ("bad_topic", OK, "city/water/" + "x" * 200 + "/telemetry"),
    ("unknown_domain", OK, "city/gas/meter-7/telemetry"),
    ("device_mismatch", {**OK, "device": "meter-8"}, TOPIC),
    ("device_mismatch", {**OK, "device_id": "meter-8"}, TOPIC),
    ("device_mismatch", {"device": 7, "readings": [OK]}, TOPIC),
    ("empty_batch", {"readings": []}, TOPIC),
    ("empty_batch", [], TOPIC),
    ("empty_batch", [{"bn": "meter-7/", "bt": 1.7e9}], TOPIC),
    ("missing_field", {"value": 1.0}, TOPIC),
    ("missing_field", {"metric": "water_flow"}, TOPIC),
    ("missing_field", {"metric": "water_flow", "value": None}, TOPIC),
    ("missing_field", {"metric": "", "value": 1}, TOPIC),
    ("unknown_metric", {"metric": "flux_capacitance", "value": 1.21}, TOPIC),
    ("non_numeric_value", {"metric": "water_flow", "value": "12.5"}, TOPIC),
    ("non_numeric_value", {"metric": "water_flow", "value": True}, TOPIC),
    ("non_numeric_value", {"metric": "water_flow", "value": [1]}, TOPIC),
    ("non_finite_value", b'{"metric": "water_flow", "value": Infinity}', TOPIC),
    ("non_finite_value", b'{"metric": "water_flow", "value": -Infinity}', TOPIC),
    ("unit_mismatch", {**OK, "unit": "furlong/fortnight"}, TOPIC),
    ("unit_mismatch", {**OK, "unit": "kWh"}, TOPIC),
    ("unit_mismatch", {**OK, "unit": 3}, TOPIC),
    ("bad_timestamp", {**OK, "ts": "yesterday"}, TOPIC),
    ("bad_timestamp", {**OK, "ts": "2026-11-22T10:00:00"}, TOPIC),
    ("bad_timestamp", {**OK, "ts": "2026-11-22"}, TOPIC),
    ("bad_timestamp", {**OK, "ts": -5}, TOPIC),
    ("bad_timestamp", {**OK, "ts": 1.7e15}, TOPIC),
    ("bad_timestamp", {**OK, "ts": True}, TOPIC),
    ("bad_timestamp", {**OK, "ts": {"s": 1}}, TOPIC),
    ("bad_timestamp", b'{"metric": "water_flow", "value": 1, "ts": NaN}', TOPIC),
    # Well formed, outside the one range every stage accepts (core.readings, 1970 to 3000).
    ("bad_timestamp", {**OK, "ts": "0001-01-01T00:00:00Z"}, TOPIC),
    ("bad_timestamp", {**OK, "ts": "1969-12-31T23:59:59Z"}, TOPIC),
    ("bad_timestamp", {**OK, "ts": "1969-12-31T23:59:59.999999Z"}, TOPIC),
    ("bad_timestamp", {**OK, "ts": "1970-01-01T00:30:00+01:00"}, TOPIC),
    ("bad_timestamp", {**OK, "ts": "3000-01-01T00:00:00Z"}, TOPIC),
    ("bad_timestamp", {**OK, "ts": "9999-12-31T23:59:59-12:00"}, TOPIC),
    ("bad_timestamp", {**OK, "ts": 99_999_999_999_999}, TOPIC),
    ("future_timestamp", {**OK, "ts": "2026-11-22T10:05:01Z"}, TOPIC),
    ("future_timestamp", {**OK, "ts": NOW.timestamp() + 3600}, TOPIC),
    ("senml_invalid", [{"bn": 7, "n": "water_flow", "v": 1}], TOPIC),
    ("senml_invalid", [{"bt": "now", "n": "water_flow", "v": 1}], TOPIC),
    ("senml_invalid", [{"bver": "10", "n": "water_flow", "v": 1}], TOPIC),
    ("senml_unsupported_version", [{"bver": 11, "n": "water_flow", "v": 1}], TOPIC),
]


@pytest.mark.parametrize(
    ("reason", "payload", "topic"),
    WHOLE_PAYLOAD_CASES,
    ids=[f"{i}-{c[0]}" for i, c in enumerate(WHOLE_PAYLOAD_CASES)],
)
def test_whole_payload_rejections(parser: PayloadParser, reason: str, payload: object, topic: str) -> None:
    exc = rejected(parser, payload, topic)
    assert exc.reason == reason
    assert exc.message


# SenML records are validated one by one: a bad record is rejected next to the valid ones.
GOOD_RECORD = {"n": "water_flow", "v": 1.0}
PER_RECORD_CASES: list[tuple[str, object]] = [
    ("device_mismatch", {"bn": "urn:dev:meter-8:", "n": "water_flow", "v": 1}),
    ("device_mismatch", {"n": "meter-8/water_flow", "v": 1}),
    ("missing_field", {"n": "water_flow"}),
    ("missing_field", {"bn": "urn:dev:meter-7:", "v": 1}),
    ("unknown_metric", {"n": "flux", "v": 1}),
    ("non_numeric_value", {"n": "water_flow", "vs": "12.5"}),
    ("non_numeric_value", {"n": "water_flow", "vb": True}),
    ("non_numeric_value", {"n": "water_flow", "vd": "AAEC"}),
    ("non_numeric_value", {"n": "water_flow", "v": "12.5"}),
    ("unit_mismatch", {"n": "water_flow", "u": "kWh", "v": 1}),
    ("bad_timestamp", {"n": "water_flow", "v": 1, "t": "now"}),
    ("bad_timestamp", {"n": "water_flow", "v": 1, "t": -1e15}),
    ("bad_timestamp", {"n": "water_flow", "v": 1, "t": 1e303}),
    ("bad_timestamp", {"n": "water_flow", "v": 1, "t": -2e9}),  # relative: 1963
    ("future_timestamp", {"n": "water_flow", "v": 1, "t": 3600}),
    ("senml_invalid", 42),
    ("senml_invalid", {"n": "water_flow", "v": 1, "crit_": 1}),
    ("senml_invalid", {"n": "water flow", "v": 1}),
    ("senml_invalid", {"n": "water_flow", "s": 1}),
    ("senml_invalid", {"n": 5, "v": 1}),
    ("senml_invalid", {"u": "m3/h"}),
]


@pytest.mark.parametrize(
    ("reason", "record"), PER_RECORD_CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(PER_RECORD_CASES)]
)
def test_per_record_rejections(parser: PayloadParser, reason: str, record: object) -> None:
    # The last record resets bn, which would otherwise carry over from the record under test.
    result = parse(parser, [GOOD_RECORD, record, {"bn": "", **GOOD_RECORD}])
    assert len(readings(result)) == 2
    (rejection,) = result.rejections
    assert (rejection.reason, rejection.index) == (reason, 1)
    assert rejection.message.startswith("record 1:")
    assert orjson.loads(rejection.item) == record


def test_every_ingest_reason_is_covered() -> None:
    consumer_only = {
        RejectReason.ENVELOPE_UNDECODABLE,
        RejectReason.ENVELOPE_UNSUPPORTED_VERSION,
        RejectReason.STORE_REJECTED,
    }
    # INTERNAL_ERROR is the bridge's answer to a parser bug, never the parser's: tests/ingest/test_records.py.
    # RETAINED is about the MQTT delivery, decided before parsing: tests/ingest/test_bridge_retained.py.
    # RECORD_TOO_LARGE is Kafka refusing a record, after parsing: tests/ingest/test_bridge_kafka_errors.py.
    not_parser = {
        *consumer_only,
        RejectReason.INTERNAL_ERROR,
        RejectReason.RETAINED,
        RejectReason.RECORD_TOO_LARGE,
    }
    covered = {reason for reason, _, _ in WHOLE_PAYLOAD_CASES}
    assert covered == {r.value for r in RejectReason} - {r.value for r in not_parser}
    assert {reason for reason, _ in PER_RECORD_CASES} <= covered


def test_readings_are_finite_numbers(parser: PayloadParser) -> None:
    for reading in readings(parse(parser, {"readings": [OK, {**OK, "value": 7}]})):
        assert isinstance(reading.value, float)
        assert math.isfinite(reading.value)
