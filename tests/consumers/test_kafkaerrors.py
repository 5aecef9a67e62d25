"""Which Kafka errors the consumer waits out and which stop it: aiokafka's own ``retriable``."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    ProducerClosed,
    RequestTimedOutError,
)

from consumers.kafkaerrors import retriable


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (KafkaConnectionError(), True),
        (NotLeaderForPartitionError(), True),
        (RequestTimedOutError(), True),
        (KafkaTimeoutError(), True),  # a broker that does not answer, as a producer sees it
        (MessageSizeTooLargeError(), False),
        (ProducerClosed(), False),
        (CommitFailedError(), False),
    ],
)
def test_retriable_follows_aiokafka(error: KafkaError, expected: bool) -> None:
    assert retriable(error) is expected
