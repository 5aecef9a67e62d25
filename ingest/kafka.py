"""The bridge's Kafka producer: ``acks=all``, idempotent when the broker supports it, started patiently."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ingest.settings import BridgeSettings

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX_S: Final = 30.0
_PROBE_TIMEOUT_S: Final = 5.0


def _producer(s: BridgeSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap,
        client_id=f"cityingest-bridge-{s.bridge_id}",
        acks="all",
        enable_idempotence=s.kafka_idempotence,
        linger_ms=s.kafka_linger_ms,
        max_batch_size=s.kafka_max_batch_bytes,
        # Room for the largest dead letter: a payload at the size limit, base64-encoded.
        max_request_size=max(1_048_576, s.kafka_max_batch_bytes, 2 * s.max_payload_bytes + 65_536),
    )


async def start_producer(s: BridgeSettings) -> AIOKafkaProducer:
    """A started producer; retries with capped exponential backoff until Kafka answers (or cancelled)."""
    delay = s.kafka_retry_backoff_s
    while True:
        producer = _producer(s)
        try:
            await producer.start()
        except asyncio.CancelledError:
            await producer.stop()
            raise
        except KafkaError as exc:
            log.warning(
                "Kafka at %s is not available (%r); retrying in %.1f s", s.kafka_bootstrap, exc, delay
            )
            await producer.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_BACKOFF_MAX_S)
            continue
        log.info("connected to Kafka at %s", s.kafka_bootstrap)
        return producer


async def kafka_reachable(producer: AIOKafkaProducer) -> bool:
    """Whether some Kafka broker answers a metadata request now."""
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            await producer.client.fetch_all_metadata()
    except (KafkaError, TimeoutError, OSError) as exc:
        log.debug("Kafka probe failed: %r", exc)
        return False
    return True
