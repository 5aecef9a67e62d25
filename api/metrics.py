"""Prometheus metrics of the API, in a registry of its own: requests per route and status, latency."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.statistics_cache import StatisticsCache
from core.dynsec import Dynsec

_BUCKETS: Final = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ApiMetrics:
    """The API's collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cityingest_api_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cityingest_api_request_duration_seconds",
            "Time to answer a request, by route template.",
            ["route", "method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.dynsec_reconciles = Counter(
            "cityingest_api_dynsec_reconcile_runs",
            "Passes that bring the broker's device accounts in step with the database, by outcome (ok, "
            "skipped: another replica held the lock, unavailable: broker unreachable, error).",
            ["outcome"],
            registry=self.registry,
        )
        self.dynsec_fixes = Counter(
            "cityingest_api_dynsec_fixes",
            "Changes the reconciler made to the broker, by action (role, client, extra_client, extra_role).",
            ["action"],
            registry=self.registry,
        )
        self._dynsec_connected = Gauge(
            "cityingest_api_dynsec_connected",
            "1 while the API is connected to the broker's dynamic security, else 0 (absent when it is off).",
            registry=self.registry,
        )

    def watch_dynsec(self, dynsec: Dynsec) -> None:
        """Report ``dynsec``'s connection in ``cityingest_api_dynsec_connected``."""
        self._dynsec_connected.set_function(lambda: 1.0 if dynsec.connected else 0.0)


class StatisticsCacheCollector(Collector):
    """Hits, misses and size of the statistics cache, read when scraped."""

    def __init__(self, cache: StatisticsCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        c = self.cache
        yield CounterMetricFamily(
            "cityingest_api_statistics_cache_hits", "Closed months of statistics served from memory.", c.hits
        )
        yield CounterMetricFamily(
            "cityingest_api_statistics_cache_misses",
            "Closed months of statistics queried (never kept, or changed since).",
            c.misses,
        )
        yield GaugeMetricFamily(
            "cityingest_api_statistics_cache_rows", "Statistics rows kept in memory.", c.rows
        )


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or "unmatched"
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - started)
