"""Whether the store accepts batches; while it does not, the consumer fetches nothing from Kafka."""

from __future__ import annotations

import logging
import time

import asyncpg
from aiokafka import AIOKafkaConsumer

from consumers.metrics import ConsumerMetrics
from consumers.storeerrors import store_connection
from core.errors import StoreUnavailable
from core.runtime import Backoff

log = logging.getLogger(__name__)

_PING_SQL = "SELECT count(*) FROM consumer_offsets WHERE false"


class StoreHealth:
    """The store's state as the consumer's last attempts saw it; pauses and resumes the fetcher with it."""

    def __init__(self, metrics: ConsumerMetrics, kafka: AIOKafkaConsumer, retry_max_s: float) -> None:
        self.metrics = metrics
        self._kafka = kafka
        self.ok = False
        self.error: str | None = "no batch applied yet"
        self._down_at = 0.0
        self._warned = False
        self._ping_backoff = Backoff(min(0.1, retry_max_s), min(1.0, retry_max_s))

    def down(self, exc: BaseException) -> None:
        """An attempt failed because the store is unavailable: pause every assigned partition."""
        self.metrics.store_errors.inc()
        self.error = f"{type(exc).__name__}: {exc}"
        if not self._warned:
            self._warned = True
            log.warning("the store is unavailable, pausing consumption: %s", self.error)
        self.ok = False
        self._down_at = time.monotonic()
        self.metrics.store_up.set(0)
        self._kafka.pause(*self._kafka.assignment())

    def up(self, attempt_started: float) -> None:
        """An attempt begun at ``attempt_started`` (``time.monotonic()``) succeeded."""
        # Shards apply in parallel: a batch that began before another one failed proves nothing about
        # the store now, so only an attempt started after the last failure brings the store back up.
        if not self.ok and attempt_started > self._down_at:
            log.info("the store is available, consuming")
            self.ok = True
            self._warned = False
            self.error = None
            self.metrics.store_up.set(1)
            self._kafka.resume(*self._kafka.paused())

    async def ping(self, pool: asyncpg.Pool) -> None:
        """While nothing is fetched (the partitions are paused), ask the store whether it is back."""
        attempt = time.monotonic()
        try:
            async with store_connection(pool) as conn:
                await conn.fetchval(_PING_SQL)
        except StoreUnavailable as exc:
            self.down(exc)
            await self._ping_backoff.sleep()
        else:
            self._ping_backoff.reset()
            self.up(attempt)
