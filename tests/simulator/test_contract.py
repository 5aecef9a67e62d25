"""The bridge's parser accepts exactly what the simulator means it to, and rejects the rest for the
reason the simulator records: the truth is only right if both sides agree on the payload contract."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from core.catalogue import load_catalogue
from core.deadletter import decode_dead_letter
from core.errors import RejectedPayload
from core.readings import Reading, decode_envelope
from core.topics import DLQ_TOPIC, READINGS_TOPIC
from core.types import ReadingFlag, RejectReason
from ingest.parse import PayloadParser
from ingest.records import Record, RecordMaker
from simulator.generate import Simulation
from simulator.malformed import MALFORMED_REASONS, MalformedPayloads
from simulator.model import Message, SimReading
from tests.simulator.conftest import seeded, small_city

CATALOGUE = load_catalogue()
NOT_FROM_DEVICES = {
    RejectReason.INTERNAL_ERROR,
    RejectReason.RETAINED,
    RejectReason.RECORD_TOO_LARGE,
    RejectReason.STORE_REJECTED,
    RejectReason.ENVELOPE_UNDECODABLE,
    RejectReason.ENVELOPE_UNSUPPORTED_VERSION,
}
"""A bridge bug, a broker's stored retained copy (a device's retained publish is taken once, like any
other), Kafka refusing a record (only below the default request limit, which fits the largest record a
payload makes), or the consumer's side of Kafka: no device payload causes these on purpose."""


@pytest.fixture(scope="module")
def parser() -> PayloadParser:
    return PayloadParser(CATALOGUE, bridge_id="bridge-sim")


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return Simulation(small_city(count=8000, malformed_rate=0.1, non_canonical_unit_share=0.5))


@pytest.fixture(scope="module")
def messages(sim: Simulation) -> list[Message]:
    return list(sim.messages())


def _received(message: Message) -> int:
    # Received one second after the device sent it.
    return message.sim_time_us + 1_000_000


def _expected(reading: SimReading) -> tuple[str, int, float, int]:
    flags = ReadingFlag.NONE
    if reading.out_of_range:
        flags |= ReadingFlag.OUT_OF_RANGE
    if reading.unit_converted:
        flags |= ReadingFlag.UNIT_CONVERTED
    return (reading.metric, reading.ts_us, reading.stored_value, int(flags))


def test_valid_messages_parse_into_exactly_their_readings(
    parser: PayloadParser, messages: list[Message]
) -> None:
    checked = converted = 0
    for message in messages:
        if message.malformed is not None:
            continue
        result = parser.parse(message.payload, message.topic, _received(message))
        assert result.rejections == (), message.payload
        assert result.envelope is not None
        assert result.device_id == message.device_id
        got = [(r.metric, r.ts_us, r.value, r.flags) for r in result.envelope.readings]
        # Exactly: the simulator does the bridge's float arithmetic for converted readings.
        assert got == [_expected(r) for r in message.readings], message.payload
        checked += 1
        converted += sum(r.unit_converted for r in message.readings)
    assert checked > 0
    assert converted > 0


def _rejections(parser: PayloadParser, message: Message) -> list[str]:
    """The reasons the bridge gives, whole payload or reading by reading; "stored" if any reading passes."""
    try:
        result = parser.parse(message.payload, message.topic, _received(message))
    except RejectedPayload as exc:
        return [exc.reason]
    stored = ["stored"] if result.envelope is not None else []
    return stored + [r.reason for r in result.rejections]


def test_malformed_messages_are_rejected_for_the_recorded_reason(
    parser: PayloadParser, messages: list[Message]
) -> None:
    seen: set[str] = set()
    for message in messages:
        if message.malformed is not None:
            seen.add(message.malformed)
            # Exactly one dead letter, for the recorded reason, and nothing stored.
            assert _rejections(parser, message) == [message.malformed], message.payload
    assert seen == {r.value for r in MALFORMED_REASONS}


def test_every_reason_a_device_can_cause_is_simulated() -> None:
    assert set(MALFORMED_REASONS) == set(RejectReason) - NOT_FROM_DEVICES


@pytest.mark.parametrize("reason", MALFORMED_REASONS, ids=str)
def test_each_kind_of_malformed_payload_gets_its_reason(
    reason: RejectReason, sim: Simulation, messages: list[Message], parser: PayloadParser
) -> None:
    # Every variant of the kind, around gauges and counters, canonical and converted readings,
    # from devices of every shape.
    builder = MalformedPayloads(CATALOGUE, prefix="city", max_payload_bytes=262_144)
    by_id = {d.device_id: d for d in sim.devices}
    valid = [m for m in messages if m.malformed is None and m.duplicate_of is None]
    rng = seeded(str(reason))
    payloads: set[bytes] = set()
    for base in valid[:: max(1, len(valid) // 150)]:
        device = by_id[base.device_id]
        other = rng.choice([d for d in sim.devices if d.device_id != device.device_id])
        reading = rng.choice(base.readings)
        topic, payload = builder.build(reason, device, other, reading, rng)
        message = Message(0, topic, payload, device.device_id, base.sim_time_us, malformed=reason.value)
        assert _rejections(parser, message) == [reason.value], (topic, payload[:300])
        payloads.add(payload)
    assert len(payloads) > 1


def _stored(records: list[Record]) -> dict[tuple[str, str, int], Reading]:
    """The store's view: the first reading of each (device, metric, time) key wins."""
    out: dict[tuple[str, str, int], Reading] = {}
    for record in records:
        envelope = decode_envelope(record.value)
        for reading in envelope.readings:
            out.setdefault((envelope.device_id, reading.metric, reading.ts_us), reading)
    return out


def test_the_bridge_output_matches_the_truth(
    sim: Simulation, messages: list[Message], parser: PayloadParser
) -> None:
    rejected: Counter[str] = Counter()
    maker = RecordMaker(
        parser,
        bridge_id="bridge-sim",
        readings_topic=READINGS_TOPIC,
        dlq_topic=DLQ_TOPIC,
        max_payload_bytes=262_144,
        rejected=rejected,
    )
    truth = sim.new_truth()
    records: list[Record] = []
    for message in messages:
        truth.record(message)
        records.extend(maker.records(message.payload, message.topic, _received(message)))
    doc = truth.to_dict()
    dead = [decode_dead_letter(r.value) for r in records if r.topic == DLQ_TOPIC]
    # One dead letter per malformed message, each standing for one rejection of the truth's reason.
    assert len(dead) == doc["messages"]["malformed"]
    assert dict(sum((d.rejections() for d in dead), Counter[str]())) == doc["dead_letters"] == dict(rejected)
    assert dict(Counter(d.reason for d in dead)) == doc["dead_letters"]
    stored = _stored([r for r in records if r.topic == READINGS_TOPIC])
    assert len(stored) == doc["readings"]["total"]
    per_metric: dict[str, list[Reading]] = {}
    for (_, metric, _), reading in stored.items():
        per_metric.setdefault(metric, []).append(reading)
    assert set(per_metric) == set(doc["metrics"])
    for metric, readings in per_metric.items():
        want = doc["metrics"][metric]
        assert len(readings) == want["count"]
        assert math.isclose(math.fsum(r.value for r in readings), want["sum"], rel_tol=1e-12, abs_tol=1e-9)
        assert sum(r.flags & ReadingFlag.UNIT_CONVERTED != 0 for r in readings) == want["unit_converted"]
        assert sum(r.flags & ReadingFlag.OUT_OF_RANGE != 0 for r in readings) == want["out_of_range"]
    assert doc["readings"]["unit_converted"] > 0
