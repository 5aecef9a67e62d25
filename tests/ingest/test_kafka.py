"""Kafka errors enter the bridge once, translated by class: the bridge never looks at a driver error."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownError,
    UnsupportedVersionError,
)

from core.errors import BrokerRefused, BrokerRejectedRecord, BrokerUnavailable, CityIngestError
from ingest.kafka import translate


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (KafkaConnectionError(), BrokerUnavailable),
        (NotLeaderForPartitionError(), BrokerUnavailable),
        (RequestTimedOutError(), BrokerUnavailable),
        (KafkaTimeoutError(), BrokerUnavailable),  # how an unreachable broker shows in a delivery
        (ConnectionResetError(), BrokerUnavailable),
        (MessageSizeTooLargeError(), BrokerRejectedRecord),
        (RecordTooLargeError(), BrokerRejectedRecord),
        (TopicAuthorizationFailedError(), BrokerRefused),
        (UnsupportedVersionError(), BrokerRefused),
        (InvalidTopicError(), BrokerRefused),
        (UnknownError(), BrokerRefused),
        (KafkaError(), BrokerRefused),
    ],
)
def test_kafka_errors_become_our_classes(error: BaseException, expected: type[CityIngestError]) -> None:
    translated = translate(error)
    assert type(translated) is expected
    assert translated.retriable is (expected is BrokerUnavailable)
    assert type(error).__name__ in str(translated)  # the log still names the driver's error


def test_aiokafka_retriable_flag_decides_for_classes_we_do_not_name() -> None:
    for cls in KafkaError.__subclasses__():
        error = cls()
        if getattr(cls, "retriable", False):
            assert isinstance(translate(error), BrokerUnavailable), cls
