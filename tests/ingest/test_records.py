"""What Kafka records one MQTT message becomes: envelopes (split when huge) and dead letters."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from bench.deadletters import invalid_batch
from core.catalogue import load_catalogue
from core.deadletter import RejectedItem, RejectedReadings, decode_dead_letter, encode_dead_letter
from core.readings import decode_envelope
from core.types import RejectReason
from ingest.parse import ParseResult, PayloadParser
from ingest.records import (
    MAX_DEAD_LETTER_PAYLOAD_BYTES,
    MAX_DETAIL_CHARS,
    MAX_DETAILS,
    MAX_MESSAGE_CHARS,
    MAX_ORIGIN_CHARS,
    MAX_READINGS_PER_RECORD,
    RecordMaker,
    minimal_dead_letter,
)

NOW_US = 1_795_000_000_000_000
TOPIC = "city/power/m-1/telemetry"


def maker(
    parser: PayloadParser | None = None, rejected: Counter[str] | None = None, max_bytes: int = 300_000
) -> RecordMaker:
    return RecordMaker(
        parser or PayloadParser(load_catalogue(), bridge_id="b-1", max_payload_bytes=max_bytes),
        bridge_id="b-1",
        readings_topic="readings",
        dlq_topic="readings.dlq",
        max_payload_bytes=max_bytes,
        rejected=rejected if rejected is not None else Counter(),
    )


def test_valid_message_is_one_envelope_keyed_by_device() -> None:
    (record,) = maker().records(orjson.dumps({"metric": "voltage", "value": 230}), TOPIC, NOW_US)
    assert (record.topic, record.key, record.readings) == ("readings", b"m-1", 1)
    env = decode_envelope(record.value)
    assert (env.device_id, env.domain, env.bridge_id, env.received_us) == ("m-1", "power", "b-1", NOW_US)


def test_huge_pack_is_split_into_records_of_bounded_size() -> None:
    count = 2 * MAX_READINGS_PER_RECORD + 7
    pack = [{"bt": 1.79e9}] + [{"n": "voltage", "v": float(i), "t": i} for i in range(count)]
    records = maker(max_bytes=2_000_000).records(orjson.dumps(pack), TOPIC, NOW_US)
    assert [r.readings for r in records] == [MAX_READINGS_PER_RECORD, MAX_READINGS_PER_RECORD, 7]
    assert {r.key for r in records} == {b"m-1"}
    values = [reading.value for r in records for reading in decode_envelope(r.value).readings]
    assert values == [float(i) for i in range(count)]  # order kept across the split
    assert max(len(r.value) for r in records) < 1_000_000


def test_rejections_follow_the_envelope_as_one_dead_letter_and_are_counted() -> None:
    # Was one dead letter per rejected reading (issue 12, point 3): now one per message, counting each.
    rejected: Counter[str] = Counter()
    payload = orjson.dumps(
        {"readings": [{"metric": "voltage", "value": 1}, {"metric": "x", "value": 1}, {"value": 2}]}
    )
    records = maker(rejected=rejected).records(payload, TOPIC, NOW_US)
    assert [r.topic for r in records] == ["readings", "readings.dlq"]
    assert [r.key for r in records] == [b"m-1", b"m-1"]
    dl = decode_dead_letter(records[1].value)
    assert (dl.device_id, dl.origin, dl.raw, dl.received_us) == ("m-1", TOPIC, payload, NOW_US)
    assert dl.readings == RejectedReadings(
        {"unknown_metric": 1, "missing_field": 1},
        1,
        (
            RejectedItem(1, "unknown_metric", "reading 1: metric 'x' is not in the catalogue"),
            RejectedItem(2, "missing_field", "reading 2: reading has no 'metric' string"),
        ),
    )
    assert dl.reason == "unknown_metric"  # a tie: the reason met first in the payload
    assert dl.message == (
        "2 rejected (unknown_metric 1, missing_field 1), 1 forwarded; "
        "reading 1: metric 'x' is not in the catalogue"
    )
    assert dl.rejections() == rejected == Counter({"unknown_metric": 1, "missing_field": 1})


def test_thousands_of_rejected_readings_are_one_bounded_dead_letter_counting_all() -> None:
    rejected: Counter[str] = Counter()
    payload, expected = invalid_batch([1.0])
    records = maker(rejected=rejected).records(payload, TOPIC.replace("power", "water"), NOW_US)
    assert [(r.topic, r.readings) for r in records] == [("readings", 1), ("readings.dlq", 0)]
    assert expected.total() > 9_000
    dl = decode_dead_letter(records[1].value)
    assert dl.rejections() == expected == rejected
    assert dl.readings is not None
    assert dl.readings.total == expected.total()
    assert [d.index for d in dl.readings.details] == list(range(1, MAX_DETAILS + 1))
    assert dl.raw == payload
    assert len(records[1].value) < 2 * len(payload) + 50_000


def test_the_most_frequent_reason_names_the_dead_letter() -> None:
    pack = [
        {"n": "voltage", "vs": "x"},
        {"n": "nope", "v": 1},
        {"n": "nope", "v": 2},
        {"n": "voltage", "v": 1},
    ]
    (env, record) = maker().records(orjson.dumps(pack), TOPIC, NOW_US)
    dl = decode_dead_letter(record.value)
    assert (env.readings, dl.reason) == (1, "unknown_metric")
    assert dl.message.startswith(
        "3 rejected (unknown_metric 2, non_numeric_value 1), 1 forwarded; record 0: "
    )
    assert dl.readings is not None
    assert [d.index for d in dl.readings.details] == [0, 1, 2]


def test_a_message_of_only_rejected_readings_is_one_dead_letter_and_no_envelope() -> None:
    (record,) = maker().records(
        orjson.dumps({"readings": [{"metric": "voltage", "value": "1"}]}), TOPIC, NOW_US
    )
    dl = decode_dead_letter(record.value)
    assert (dl.reason, dl.rejections()) == ("non_numeric_value", Counter({"non_numeric_value": 1}))
    assert dl.readings is not None
    assert dl.readings.forwarded == 0


def test_detail_messages_are_short() -> None:
    payload = orjson.dumps({"readings": [{"metric": "voltage", "value": 1, "unit": "u" * 5000}]})
    (record,) = maker().records(payload, TOPIC, NOW_US)
    dl = decode_dead_letter(record.value)
    assert dl.readings is not None
    assert all(len(d.message) <= MAX_DETAIL_CHARS for d in dl.readings.details)
    assert dl.raw == payload


@pytest.mark.parametrize("fill", [b"\x01", b'"', "\u00e9".encode()])
def test_every_dead_letter_fits_a_kafka_record(fill: bytes) -> None:
    """Whatever the payload's characters and the configured payload limit, and a topic of any length."""
    huge = 2_000_000
    payload = fill * (huge // len(fill))
    topic = "city/water/" + "t" * 70_000
    (record,) = maker(max_bytes=huge).records(payload, topic, NOW_US)
    dl = decode_dead_letter(record.value)
    assert len(record.value) < 1_000_000
    assert dl.raw == payload[:MAX_DEAD_LETTER_PAYLOAD_BYTES]
    assert len(dl.origin) == MAX_ORIGIN_CHARS
    rows = [{"metric": "voltage", "value": 1, "unit": fill.decode() * 150} for _ in range(1_500)]
    batch = orjson.dumps({"readings": rows})
    assert MAX_DEAD_LETTER_PAYLOAD_BYTES < len(batch) < huge
    (record,) = maker(max_bytes=huge).records(batch, TOPIC, NOW_US)
    assert len(record.value) < 1_000_000
    dl = decode_dead_letter(record.value)
    assert dl.raw == batch[:MAX_DEAD_LETTER_PAYLOAD_BYTES]
    assert f"keeps the first {MAX_DEAD_LETTER_PAYLOAD_BYTES} bytes" in dl.message
    assert dl.rejections() == Counter({"unit_mismatch": 1_500})


def test_control_characters_are_kept_as_base64_text_otherwise() -> None:
    raw = b"\x01\x02\x03\x04 not json"
    (record,) = maker().records(raw, TOPIC, NOW_US)
    assert orjson.loads(record.value)["payload_encoding"] == "base64"
    assert decode_dead_letter(record.value).raw == raw
    (record,) = maker().records(b'{"a": "\xc3\xa9"', TOPIC, NOW_US)
    assert orjson.loads(record.value)["payload_encoding"] == "utf-8"


def test_version_1_dead_letters_are_still_read() -> None:
    v1 = {
        "v": 1,
        "reason": "unknown_metric",
        "message": "reading 3: metric 'flux' is not in the catalogue",
        "source": "mqtt",
        "origin": "city/water/meter-0042/telemetry",
        "device": "meter-0042",
        "payload": '{"metric":"flux","value":1}',
        "payload_encoding": "utf-8",
        "received": 1795341600123456,
        "component": "bridge-host-1234",
    }
    dl = decode_dead_letter(orjson.dumps(v1))
    assert (dl.reason, dl.raw, dl.readings) == ("unknown_metric", b'{"metric":"flux","value":1}', None)
    assert dl.rejections() == Counter({"unknown_metric": 1})
    with pytest.raises(ValueError, match="version 3"):
        decode_dead_letter(orjson.dumps({**v1, "v": 3}))


def test_a_whole_payload_dead_letter_round_trips_with_no_readings() -> None:
    (record,) = maker().records(b"{not json", TOPIC, NOW_US)
    doc = orjson.loads(record.value)
    assert (doc["v"], doc["readings"]) == (2, None)
    dl = decode_dead_letter(record.value)
    assert encode_dead_letter(dl) == record.value
    assert dl.rejections() == Counter({"invalid_json": 1})


def test_payload_rejection_keeps_the_raw_payload_and_topic() -> None:
    (record,) = maker().records(b"\x00\xffnot json", "city/gas/g-1/telemetry", NOW_US)
    dl = decode_dead_letter(record.value)
    assert (dl.reason, dl.raw, dl.origin, dl.component_id) == (
        "unknown_domain",
        b"\x00\xffnot json",
        "city/gas/g-1/telemetry",
        "b-1",
    )
    assert record.key is None
    assert dl.received_us == NOW_US


def test_too_large_payload_is_cut_in_the_dead_letter() -> None:
    payload = b"[" + b"1," * 200_000 + b"1]"
    (record,) = maker().records(payload, TOPIC, NOW_US)
    dl = decode_dead_letter(record.value)
    assert dl.reason == "payload_too_large"
    assert dl.raw == payload[:300_000]
    assert "first 300000 bytes" in dl.message


class _BrokenParser(PayloadParser):
    def parse(self, payload: bytes, topic: str, received_us: int) -> ParseResult:  # noqa: ARG002
        raise ZeroDivisionError("a bug")


def test_parser_bug_dead_letters_the_payload(caplog: pytest.LogCaptureFixture) -> None:
    parser = _BrokenParser(load_catalogue(), bridge_id="b-1")
    (record,) = maker(parser).records(b'{"metric": "voltage"}', TOPIC, NOW_US)
    dl = decode_dead_letter(record.value)
    assert (dl.reason, dl.raw) == (RejectReason.INTERNAL_ERROR.value, b'{"metric": "voltage"}')
    assert "parser failed" in caplog.text


def test_minimal_dead_letter_decodes_whatever_it_was_given() -> None:
    # The last resort when the ordinary dead letter cannot be built: ASCII only, so nothing can fail.
    raw = b"\xff\x00{not json"
    value = minimal_dead_letter('a "bug"\n', "city/water/\udcff/telemetry", raw, NOW_US, "b-\u00e9")
    dl = decode_dead_letter(value)
    assert (dl.reason, dl.raw, dl.received_us, dl.source) == ("internal_error", raw, NOW_US, "mqtt")
    assert (dl.message, dl.component_id) == ('a "bug"\n', "b-\u00e9")
    assert dl.origin == "city/water/\\udcff/telemetry"


class _LoudParser(PayloadParser):
    def parse(self, payload: bytes, topic: str, received_us: int) -> ParseResult:  # noqa: ARG002
        raise ValueError("\x01" * 100_000)


def test_a_huge_error_message_is_cut_in_the_dead_letter() -> None:
    parser = _LoudParser(load_catalogue(), bridge_id="b-1")
    (record,) = maker(parser).records(b"{}", TOPIC, NOW_US)
    dl = decode_dead_letter(record.value)
    assert dl.reason == RejectReason.INTERNAL_ERROR.value
    assert len(dl.message) == MAX_MESSAGE_CHARS
    assert len(record.value) < 10_000
