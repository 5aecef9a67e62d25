"""The bridge's Prometheus metrics, kept as plain counters on the hot path and exported on scrape.

Each bridge owns a :class:`BridgeStats` and a dedicated ``CollectorRegistry`` (never the global one), so
several bridges can run in one process (tests) without clashing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core import metricnames as names

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class BridgeStats:
    """Counters the bridge increments as it works; read by the collector and by tests."""

    messages_received: int = 0
    messages_acked: int = 0
    messages_failed: int = 0
    """Messages the bridge failed on without even a dead letter (acknowledged and logged; a bug)."""
    readings_forwarded: int = 0
    records_forwarded: int = 0
    dead_letters_written: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    """Rejected payloads and readings by reason code."""
    kafka_errors: int = 0
    kafka_retries: int = 0
    mqtt_connects: int = 0
    mqtt_reconnects: int = 0
    intake_pauses: int = 0
    """Times the bridge stopped reading MQTT because its in-flight window or byte budget was full."""
    in_flight_bytes_peak: int = 0
    """The most bytes of records of unacknowledged messages the bridge held at once."""

    @property
    def rejected_total(self) -> int:
        """Rejections of every reason."""
        return sum(self.rejected.values())


class _StatsCollector:
    """Exports :class:`BridgeStats` plus live gauges (in-flight, readiness) as Prometheus metrics."""

    def __init__(
        self,
        stats: BridgeStats,
        in_flight: Callable[[], int],
        ready: Callable[[], bool],
        in_flight_bytes: Callable[[], int] | None = None,
    ) -> None:
        self._stats = stats
        self._in_flight = in_flight
        self._ready = ready
        self._in_flight_bytes = in_flight_bytes

    def collect(self) -> Iterable[Metric]:
        s = self._stats
        prefix = names.BRIDGE_PREFIX
        simple = [
            (names.BRIDGE_MESSAGES_RECEIVED, "MQTT messages received from devices.", s.messages_received),
            (
                f"{prefix}_messages_acked",
                "MQTT messages acknowledged to the broker after Kafka took them.",
                s.messages_acked,
            ),
            (
                f"{prefix}_messages_failed",
                "MQTT messages acknowledged without a record or dead letter after a bridge bug (logged).",
                s.messages_failed,
            ),
            (names.BRIDGE_READINGS_FORWARDED, "Valid readings Kafka acknowledged.", s.readings_forwarded),
            (
                f"{prefix}_records_forwarded",
                "Kafka records (envelopes) Kafka acknowledged.",
                s.records_forwarded,
            ),
            (names.BRIDGE_DEAD_LETTERS, "Dead-letter records Kafka acknowledged.", s.dead_letters_written),
            (f"{prefix}_kafka_errors", "Kafka sends that failed (each is retried).", s.kafka_errors),
            (f"{prefix}_mqtt_connects", "Successful MQTT connections, the first included.", s.mqtt_connects),
            (f"{prefix}_mqtt_reconnects", "Successful MQTT connections after the first.", s.mqtt_reconnects),
            (
                f"{prefix}_intake_pauses",
                "Times MQTT reading paused: in-flight messages or bytes at their limit.",
                s.intake_pauses,
            ),
        ]
        for name, doc, value in simple:
            yield CounterMetricFamily(name, doc, value=value)
        rejected = CounterMetricFamily(
            names.BRIDGE_REJECTED, "Rejected payloads and readings by reason.", labels=["reason"]
        )
        for reason, count in sorted(s.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield GaugeMetricFamily(
            f"{prefix}_messages_in_flight",
            "MQTT messages received but not yet acknowledged.",
            self._in_flight(),
        )
        if self._in_flight_bytes is not None:
            yield GaugeMetricFamily(
                f"{prefix}_in_flight_bytes",
                "Bytes of Kafka records of MQTT messages not yet acknowledged.",
                self._in_flight_bytes(),
            )
            yield GaugeMetricFamily(
                f"{prefix}_in_flight_bytes_peak",
                "The most bytes of Kafka records of unacknowledged messages held at once.",
                s.in_flight_bytes_peak,
            )
        yield GaugeMetricFamily(
            f"{prefix}_ready", "1 when the bridge is ready to take traffic.", int(self._ready())
        )


def build_registry(
    stats: BridgeStats,
    in_flight: Callable[[], int],
    ready: Callable[[], bool],
    in_flight_bytes: Callable[[], int] | None = None,
) -> CollectorRegistry:
    """A dedicated registry exporting one bridge's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(stats, in_flight, ready, in_flight_bytes))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(registry)
