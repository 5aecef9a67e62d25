"""Periodic store maintenance: drop raw-reading chunks past the retention age (rollups are kept)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from consumers.metrics import ConsumerMetrics
from consumers.sink import drop_old_readings
from consumers.storeerrors import store_connection
from core.errors import StoreRejectedData, StoreUnavailable

log = logging.getLogger(__name__)


async def run_retention(pool: asyncpg.Pool, retention_days: float, metrics: ConsumerMetrics) -> int | None:
    """Drop raw chunks older than ``retention_days`` once; None if another consumer holds the task."""
    async with store_connection(pool) as conn:
        dropped = await drop_old_readings(conn, retention_days * 86_400)
    if dropped:
        metrics.chunks_dropped.inc(dropped)
        log.info("retention dropped %s chunk(s) of raw readings older than %s days", dropped, retention_days)
    return dropped


async def retention_loop(
    pool: asyncpg.Pool, retention_days: float, interval_s: float, metrics: ConsumerMetrics
) -> None:
    """Run retention now and then every ``interval_s`` until cancelled; store errors are retried later."""
    while True:
        try:
            await run_retention(pool, retention_days, metrics)
        except (StoreUnavailable, StoreRejectedData) as exc:
            log.warning("retention could not run, will try again in %ss: %s", interval_s, exc)
        await asyncio.sleep(interval_s)
