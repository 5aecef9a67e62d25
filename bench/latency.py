"""Publish-to-queryable latency: a tight poll of the raw table for probe readings with known timestamps.

A probe's readings are written in the transaction that also writes its rollups and offsets, so the
first poll that sees its row is when the probe became queryable (at the latest). The poll is an index
lookup on the raw table's unique key (device, metric, ts), from the first probe not yet seen on.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping, Sequence

import asyncpg

from core.readings import from_us, to_us

_SEEN = "SELECT ts FROM readings WHERE device_id = $1 AND metric = $2 AND ts >= $3"


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of ``values`` (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class ProbePoller:
    """Polls for probe rows every ``interval_s`` and notes when each was first seen (``time.monotonic``)."""

    def __init__(
        self, dsn: str, device_id: str, metric: str, targets: Mapping[int, int], interval_s: float
    ) -> None:
        self.dsn, self.device_id, self.metric = dsn, device_id, metric
        self.targets = dict(targets)
        """ts_us of a probe's first reading -> probe number."""
        self.interval_s = interval_s
        self.seen: dict[int, float] = {}
        """Probe number -> end of the first poll that returned it."""
        self.polls = 0
        self.poll_seconds = 0.0
        """Time spent inside the queries (their mean is the second part of the resolution)."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and start polling in the background."""
        conn = await asyncpg.connect(self.dsn)
        self._task = asyncio.create_task(self._run(conn))

    async def _run(self, conn: asyncpg.Connection) -> None:
        try:
            stmt = await conn.prepare(_SEEN)
            pending = sorted(self.targets)
            while pending:
                started = time.monotonic()
                rows = await stmt.fetch(self.device_id, self.metric, from_us(pending[0]))
                ended = time.monotonic()
                self.polls += 1
                self.poll_seconds += ended - started
                for row in rows:
                    k = self.targets.get(to_us(row["ts"]))
                    if k is not None and k not in self.seen:
                        self.seen[k] = ended
                pending = [ts for ts in pending if self.targets[ts] not in self.seen]
                await asyncio.sleep(self.interval_s)
        finally:
            await asyncio.shield(conn.close())

    async def stop(self, within_s: float) -> None:
        """Wait up to ``within_s`` for every probe to be seen, then stop polling."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), within_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    @property
    def mean_query_s(self) -> float:
        """Mean duration of one poll query."""
        return self.poll_seconds / self.polls if self.polls else 0.0
