"""Whether the store accepts batches; while it does not, the consumer fetches nothing from Kafka."""

from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaConsumer

from consumers.metrics import ConsumerMetrics

log = logging.getLogger(__name__)


class StoreHealth:
    """The store's state as the consumer's last attempts saw it; pauses and resumes the fetcher with it."""

    def __init__(self, metrics: ConsumerMetrics) -> None:
        self.metrics = metrics
        self.kafka: AIOKafkaConsumer | None = None
        """The fetcher to pause while the store is down (set once it exists)."""
        self.ok = False
        self.error: str | None = "no batch applied yet"
        self._down_at = 0.0
        self._warned = False

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
        if self.kafka is not None:
            self.kafka.pause(*self.kafka.assignment())

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
            if self.kafka is not None:
                self.kafka.resume(*self.kafka.paused())
