"""The bridge's parser accepts exactly what the simulator means it to, and rejects the rest for the
reason the simulator records: the truth is only right if both sides agree on the payload contract."""

from __future__ import annotations

import pytest

from core.catalogue import load_catalogue
from core.errors import RejectedPayload
from core.types import ReadingFlag
from ingest.parse import PayloadParser
from simulator.generate import generate
from simulator.model import Message
from tests.simulator.conftest import small_city


@pytest.fixture(scope="module")
def parser() -> PayloadParser:
    return PayloadParser(load_catalogue(), bridge_id="bridge-sim")


@pytest.fixture(scope="module")
def messages() -> list[Message]:
    return list(generate(small_city(count=8000, malformed_rate=0.1)))


def test_valid_messages_parse_into_exactly_their_readings(
    parser: PayloadParser, messages: list[Message]
) -> None:
    checked = 0
    for message in messages:
        if message.malformed is not None:
            continue
        # Received one second after the device sent it.
        result = parser.parse(message.payload, message.topic, message.sim_time_us + 1_000_000)
        assert result.rejections == (), message.payload
        assert result.envelope is not None
        assert result.device_id == message.device_id
        got = [(r.metric, r.ts_us, r.value, r.flags) for r in result.envelope.readings]
        expected = [
            (r.metric, r.ts_us, r.value, int(ReadingFlag.OUT_OF_RANGE) if r.out_of_range else 0)
            for r in message.readings
        ]
        assert got == expected, message.payload
        checked += 1
    assert checked > 0


def _rejections(parser: PayloadParser, message: Message) -> list[str]:
    """The reasons the bridge gives, whole payload or reading by reading; "stored" if any reading passes."""
    try:
        result = parser.parse(message.payload, message.topic, message.sim_time_us + 1_000_000)
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
    assert len(seen) >= 10
