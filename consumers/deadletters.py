"""Send dead letters to the dead-letter topic, retrying while Kafka cannot take them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumers.kafkaerrors import retriable
from consumers.metrics import ConsumerMetrics
from core.deadletter import DeadLetter, encode_dead_letter
from core.runtime import Backoff

log = logging.getLogger(__name__)


async def send_dead_letters(
    producer: AIOKafkaProducer, topic: str, letters: Sequence[DeadLetter], metrics: ConsumerMetrics
) -> None:
    """Write ``letters`` to ``topic``; while Kafka is unavailable, retry with backoff (never drop one).

    A Kafka error no retry can cure (a record too large, a closed producer) is raised.
    """
    backoff = Backoff(0.1, 10.0)
    while True:
        try:
            futures = [
                await producer.send(
                    topic, value=encode_dead_letter(dl), key=dl.device_id.encode() if dl.device_id else None
                )
                for dl in letters
            ]
            await asyncio.gather(*futures)
            break
        except KafkaError as exc:
            if not retriable(exc):
                raise
            log.warning("cannot write dead letters to %s, retrying: %r", topic, exc)
            await backoff.sleep()
    for dl in letters:
        metrics.dead_letters.labels(dl.reason).inc()
        log.warning("dead-lettered record %s (%s): %s", dl.origin, dl.reason, dl.message)
