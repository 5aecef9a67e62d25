"""Send dead letters to the dead-letter topic, retrying until Kafka takes them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumers.metrics import ConsumerMetrics
from core.deadletter import DeadLetter, encode_dead_letter

log = logging.getLogger(__name__)


async def send_dead_letters(
    producer: AIOKafkaProducer, topic: str, letters: Sequence[DeadLetter], metrics: ConsumerMetrics
) -> None:
    """Write ``letters`` to ``topic``; while Kafka refuses, retry with backoff (never drop one)."""
    delay = 0.1
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
            log.warning("cannot write dead letters to %s, retrying: %s", topic, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    for dl in letters:
        metrics.dead_letters.labels(dl.reason).inc()
        log.warning("dead-lettered record %s (%s): %s", dl.origin, dl.reason, dl.message)
