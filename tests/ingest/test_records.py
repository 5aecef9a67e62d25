"""What Kafka records one MQTT message becomes: envelopes (split when huge) and dead letters."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from core.catalogue import load_catalogue
from core.deadletter import decode_dead_letter
from core.readings import decode_envelope
from core.types import RejectReason
from ingest.parse import ParseResult, PayloadParser
from ingest.records import MAX_READINGS_PER_RECORD, RecordMaker, minimal_dead_letter

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


def test_rejections_follow_the_envelope_and_are_counted() -> None:
    rejected: Counter[str] = Counter()
    payload = {"readings": [{"metric": "voltage", "value": 1}, {"metric": "x", "value": 1}, {"value": 2}]}
    records = maker(rejected=rejected).records(orjson.dumps(payload), TOPIC, NOW_US)
    assert [r.topic for r in records] == ["readings", "readings.dlq", "readings.dlq"]
    letters = [decode_dead_letter(r.value) for r in records[1:]]
    assert [dl.reason for dl in letters] == ["unknown_metric", "missing_field"]
    assert [dl.device_id for dl in letters] == ["m-1", "m-1"]
    assert [r.key for r in records[1:]] == [b"m-1", b"m-1"]
    assert orjson.loads(letters[1].raw) == {"value": 2}
    assert rejected == Counter({"unknown_metric": 1, "missing_field": 1})


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
