"""The bridge's Kafka producer: ``acks=all``, idempotent when the broker supports it, started patiently.

Kafka errors enter the bridge here and only here: :func:`translate` turns them into our classes, decided
by aiokafka's own ``retriable`` flag, and the bridge branches on those classes alone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerClosed,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from core.errors import BrokerRefused, BrokerRejectedRecord, BrokerUnavailable, CityIngestError
from core.runtime import Backoff
from ingest.settings import BridgeSettings

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX_S: Final = 30.0
_PROBE_TIMEOUT_S: Final = 5.0

_RECORD_REFUSED: Final = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
"""Refusals of one record for its size: the next record may well pass."""
_TRANSIENT: Final = (KafkaTimeoutError, KafkaConnectionError, ProducerClosed, TimeoutError, OSError)
"""Not flagged ``retriable`` by aiokafka, yet an outage or a stop: a delivery timeout is how an
unreachable broker shows in the producer, and the bridge closes its producer only when it stops."""


def translate(exc: BaseException) -> CityIngestError:
    """Our error for a Kafka error: retriable -> :class:`BrokerUnavailable`, a record's size ->
    :class:`BrokerRejectedRecord`, any other refusal -> :class:`BrokerRefused` (the component fails)."""
    if isinstance(exc, CityIngestError):
        return exc
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _RECORD_REFUSED):
        return BrokerRejectedRecord(text)
    if isinstance(exc, _TRANSIENT) or (isinstance(exc, KafkaError) and exc.retriable):
        return BrokerUnavailable(text)
    return BrokerRefused(text)


def max_request_bytes(s: BridgeSettings) -> int:
    """The largest request, so record, the producer sends."""
    if s.kafka_max_request_bytes is not None:
        return s.kafka_max_request_bytes
    # Room for the largest dead letter: a payload at the size limit, base64-encoded.
    return max(1_048_576, s.kafka_max_batch_bytes, 2 * s.max_payload_bytes + 65_536)


def _producer(s: BridgeSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap,
        client_id=f"cityingest-bridge-{s.bridge_id}",
        acks="all",
        enable_idempotence=s.kafka_idempotence,
        linger_ms=s.kafka_linger_ms,
        max_batch_size=s.kafka_max_batch_bytes,
        max_request_size=max_request_bytes(s),
    )


async def start_producer(s: BridgeSettings) -> AIOKafkaProducer:
    """A started producer; retries with capped exponential backoff while Kafka is unavailable (or until
    cancelled). Raises :class:`BrokerRefused` when Kafka refuses the producer for good."""
    backoff = Backoff(s.kafka_retry_backoff_s, RETRY_BACKOFF_MAX_S)
    while True:
        producer = _producer(s)
        try:
            await producer.start()
        except BaseException as exc:
            await asyncio.shield(producer.stop())
            error = translate(exc) if isinstance(exc, KafkaError | OSError) else None
            if error is None:
                raise
            if not error.retriable:
                log.error(  # noqa: TRY400 -- the bridge logs the traceback once, when it fails
                    "Kafka at %s refuses the bridge's producer: %s", s.kafka_bootstrap, error
                )
                raise error from exc
            delay = backoff.delay()
            log.warning(
                "Kafka at %s is not available (%s); retrying in %.1f s", s.kafka_bootstrap, error, delay
            )
            await asyncio.sleep(delay)
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
