"""Prometheus metrics of one consumer process, in a registry of its own (several may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from core import metricnames as names

_PREFIX = names.CONSUMER_PREFIX


class ConsumerMetrics:
    """Counters, gauges and histograms the consumer updates and ``/metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.records = Counter(f"{_PREFIX}_records", "Kafka records consumed.", registry=r)
        self.readings = Counter(names.CONSUMER_READINGS, "Readings in the records consumed.", registry=r)
        self.stored = Counter(
            names.CONSUMER_READINGS_STORED, "Readings new to the store, folded into the rollups.", registry=r
        )
        self.duplicates = Counter(
            f"{_PREFIX}_duplicates", "Readings ignored because the store already had them.", registry=r
        )
        self.corrections = Counter(
            f"{_PREFIX}_counter_corrections",
            "Stored counter readings whose increase changed because a late reading arrived before them.",
            registry=r,
        )
        self.batches = Counter(f"{_PREFIX}_batches", "Batches applied to the store.", registry=r)
        self.batch_seconds = Histogram(
            f"{_PREFIX}_batch_seconds",
            "Time to apply one batch (one database transaction), retries excluded.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.dead_letters = Counter(
            names.CONSUMER_DEAD_LETTERS, "Records sent to the dead-letter topic.", ["reason"], registry=r
        )
        self.store_errors = Counter(
            f"{_PREFIX}_store_errors", "Failed attempts to apply a batch or read offsets.", registry=r
        )
        self.store_up = Gauge(f"{_PREFIX}_store_up", "1 while the database accepts batches.", registry=r)
        self.lag = Gauge(
            f"{_PREFIX}_lag",
            "Records of each assigned partition not yet applied (high watermark - stored offset).",
            ["topic", "partition"],
            registry=r,
        )
        self.chunks_dropped = Counter(
            f"{_PREFIX}_retention_chunks_dropped", "Raw-reading chunks dropped by retention.", registry=r
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
