"""No payload stops the bridge: through real Mosquitto and Tansu, a poison message is dead-lettered and
acknowledged, and the messages behind it flow, even when handling it fails unexpectedly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import ingest.records
from core.deadletter import DeadLetter, encode_dead_letter
from core.readings import Envelope, encode_envelope
from devstack.mosquitto import MosquittoBroker
from ingest.bridge import Bridge
from ingest.records import RecordMaker
from tests.conftest import KafkaTopics
from tests.ingest.support import (
    TopicReader,
    eventually,
    publish,
    reading_msg,
    wired_settings,
)

pytestmark = [pytest.mark.integration]

POISON = b'[{"bt":-1e15,"n":"water_flow","v":1}]'
"""The message that wedged the bridge for good: its time resolves ~3e7 years before the epoch, which
does not fit the envelope's 64-bit integer."""

GOOD = 20


async def test_poison_message_is_dead_lettered_and_the_messages_behind_it_flow(
    mqtt_broker: MosquittoBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    settings = wired_settings(mqtt_broker, kafka_bootstrap, kafka_topics, mqtt_prefix)
    topic = f"{mqtt_prefix}/water/x/telemetry"
    good = [reading_msg(mqtt_prefix, "x", float(i)) for i in range(GOOD)]
    async with Bridge(settings) as bridge:
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        await publish(mqtt_broker.host, mqtt_broker.port, [(topic, POISON), *good])
        async with TopicReader(kafka_bootstrap, kafka_topics.readings) as readings:
            await readings.until(lambda: len(readings.values()) >= GOOD, 30, "the good readings")
        async with TopicReader(kafka_bootstrap, kafka_topics.dlq) as dlq:
            await dlq.until(lambda: len(dlq.records) >= 1, 30, "the poison's dead letter")
        await eventually(lambda: bridge.stats.messages_acked == GOOD + 1, 30, "every message acked")
        assert bridge.not_ready_reasons() == []
        # Later messages still flow: the bridge did not only survive, it keeps working.
        again = [(topic, POISON), reading_msg(mqtt_prefix, "x", 99)]
        await publish(mqtt_broker.host, mqtt_broker.port, again)
        await eventually(lambda: bridge.stats.messages_acked == GOOD + 3, 30, "the second round acked")
    assert sorted(readings.values()) == [float(i) for i in range(GOOD)]
    (letter,) = dlq.dead_letters()
    assert (letter.reason, letter.origin, letter.device_id) == ("bad_timestamp", topic, "x")
    assert "1970-01-01" in letter.message
    assert bridge.stats.rejected == {"bad_timestamp": 2}
    assert bridge.stats.messages_failed == 0


def _fail_on(value: float, real: Callable[[Envelope], bytes]) -> Callable[[Envelope], bytes]:
    def encode(env: Envelope) -> bytes:
        if any(r.value == value for r in env.readings):
            raise TypeError("injected: cannot encode this envelope")
        return real(env)

    return encode


def _fail_internal(real: Callable[[DeadLetter], bytes]) -> Callable[[DeadLetter], bytes]:
    def encode(dl: DeadLetter) -> bytes:
        if dl.reason == "internal_error":
            raise ValueError("injected: cannot encode this dead letter")
        return real(dl)

    return encode


def _raise(*_args: Any) -> Any:
    raise RuntimeError("injected: the safety net itself fails")


@pytest.mark.parametrize("fault", ["record", "record-and-dead-letter", "everything"])
async def test_unexpected_failure_on_a_message_is_dead_lettered_and_acknowledged(
    mqtt_broker: MosquittoBroker,
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    """Fault injection: making the records of one message raises (outside the parser, as the poison's
    encoding did); then building its dead letter raises too; then even the fallback dead letter does."""
    bad_value = 666.0
    monkeypatch.setattr(ingest.records, "encode_envelope", _fail_on(bad_value, encode_envelope))
    if fault != "record":
        monkeypatch.setattr(ingest.records, "encode_dead_letter", _fail_internal(encode_dead_letter))
    if fault == "everything":
        monkeypatch.setattr(RecordMaker, "internal_error", _raise)
    settings = wired_settings(mqtt_broker, kafka_bootstrap, kafka_topics, mqtt_prefix)
    bad_topic, bad_payload = reading_msg(mqtt_prefix, "f-1", bad_value)
    messages = [
        reading_msg(mqtt_prefix, "f-1", 1.0),
        (bad_topic, bad_payload),
        *[reading_msg(mqtt_prefix, "f-1", float(i)) for i in range(2, 12)],
    ]
    async with Bridge(settings) as bridge:
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        await publish(mqtt_broker.host, mqtt_broker.port, messages)
        async with TopicReader(kafka_bootstrap, kafka_topics.readings) as readings:
            await readings.until(lambda: len(readings.values()) >= 11, 30, "the other readings")
        acked = len(messages) - (fault == "everything")  # the last resort acks outside the stats
        await eventually(lambda: bridge.stats.messages_acked == acked, 30, "every message acked")
        assert bridge.in_flight == 0
        assert bridge.not_ready_reasons() == []
        if fault != "everything":
            async with TopicReader(kafka_bootstrap, kafka_topics.dlq) as dlq:
                await dlq.until(lambda: len(dlq.records) >= 1, 30, "the internal_error dead letter")
    # Every message was acknowledged to the broker: a bridge taking over the session gets none again.
    async with Bridge(settings) as second:
        await eventually(lambda: not second.not_ready_reasons(), 30, "the second bridge to be ready")
        await publish(mqtt_broker.host, mqtt_broker.port, [reading_msg(mqtt_prefix, "f-1", 100.0)])
        await eventually(lambda: second.stats.messages_acked == 1, 30, "the sentinel acked")
    assert second.stats.messages_received == 1
    assert sorted(readings.values()) == [float(i) for i in range(1, 12)]
    if fault == "everything":
        assert bridge.stats.messages_failed == 1
        return
    (letter,) = dlq.dead_letters()
    assert (letter.reason, letter.raw, letter.origin) == ("internal_error", bad_payload, bad_topic)
    assert letter.component_id == settings.bridge_id
    assert bridge.stats.rejected == {"internal_error": 1}
    assert bridge.stats.messages_failed == 0
