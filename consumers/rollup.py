"""The rollup rules, without I/O: bucket boundaries, the counter increase rule and the folding algorithm.

``consumers/sink.py`` implements the same rules set-based in SQL; this module is their specification
and reference implementation, tested exhaustively, and what tests recompute the truth with.

Buckets are UTC: an hour, a day, a calendar month (real months, not 30 days).

Counter increase rule (order-independent: a pure function of the set of stored readings). Within one
series (device, metric) ordered by time, each reading's increase over its predecessor ``prev`` is::

    0                 for the first reading of the series (nothing to compare with)
    value - prev      when value >= prev
    max(value, 0)     when value < prev: the meter restarted, so the new value counted from zero

A bucket's ``increase`` is the sum of the increases of its readings. A late reading inserted between
``prev`` and ``next`` adds its own increase to its bucket and replaces ``next``'s increase (in ``next``'s
bucket) by the increase of ``next`` over the late reading, so late data never double-counts consumption.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from core.readings import from_us, to_us
from core.types import FLAGGED_MASK, RollupLevel

Level = RollupLevel
LEVELS: Final[tuple[Level, ...]] = ("hourly", "daily", "monthly")

_HOUR_US: Final = 3_600_000_000
_DAY_US: Final = 24 * _HOUR_US

SeriesKey = tuple[str, str]
"""(device_id, metric)"""
RowKey = tuple[str, str, int]
"""(device_id, metric, ts_us): the identity of a stored reading."""


def bucket_start(ts_us: int, level: Level) -> int:
    """Start (µs since the epoch, UTC) of the bucket of ``level`` that contains ``ts_us``."""
    if level == "hourly":
        return ts_us - ts_us % _HOUR_US
    if level == "daily":
        return ts_us - ts_us % _DAY_US
    ts = from_us(ts_us)
    return to_us(datetime(ts.year, ts.month, 1, tzinfo=UTC))


def counter_increase(prev: float | None, value: float) -> float:
    """A counter reading's reset-aware increase over its predecessor ``prev`` (None: first reading)."""
    if prev is None:
        return 0.0
    if value >= prev:
        return value - prev
    return max(value, 0.0)


def is_flagged(flags: int) -> bool:
    """Whether a reading with ``flags`` counts as flagged in the rollups."""
    return bool(flags & FLAGGED_MASK)


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as the store keeps it."""

    device_id: str
    metric: str
    ts_us: int
    value: float
    flags: int = 0

    @property
    def key(self) -> RowKey:
        """The reading's unique identity in the store."""
        return (self.device_id, self.metric, self.ts_us)


@dataclass(slots=True)
class Bucket:
    """The aggregate of one (device, metric, level, bucket)."""

    count: int
    sum: float
    sum_sq: float
    min: float
    max: float
    flagged: int
    first_ts_us: int
    first_value: float
    last_ts_us: int
    last_value: float
    increase: float | None

    @classmethod
    def of(cls, r: StoredReading, increase: float | None) -> Bucket:
        """The bucket holding the single reading ``r``."""
        return cls(
            1, r.value, r.value * r.value, r.value, r.value, int(is_flagged(r.flags)),
            r.ts_us, r.value, r.ts_us, r.value, increase,
        )  # fmt: skip

    def add(self, r: StoredReading, increase: float | None) -> None:
        """Fold one more reading (with its counter increase, None for gauges) into the bucket."""
        self.count += 1
        self.sum += r.value
        self.sum_sq += r.value * r.value
        self.min = min(self.min, r.value)
        self.max = max(self.max, r.value)
        self.flagged += int(is_flagged(r.flags))
        if r.ts_us < self.first_ts_us:
            self.first_ts_us, self.first_value = r.ts_us, r.value
        if r.ts_us > self.last_ts_us:
            self.last_ts_us, self.last_value = r.ts_us, r.value
        self.add_increase(increase)

    def add_increase(self, delta: float | None) -> None:
        """Add a counter increase (or a correction of one) to the bucket."""
        if delta is not None:
            self.increase = (self.increase or 0.0) + delta


BucketKey = tuple[str, str, Level, int]
"""(device_id, metric, level, bucket_start_us)"""
Rollups = dict[BucketKey, Bucket]


def _fold(out: Rollups, r: StoredReading, increase: float | None) -> None:
    for level in LEVELS:
        key = (r.device_id, r.metric, level, bucket_start(r.ts_us, level))
        bucket = out.get(key)
        if bucket is None:
            out[key] = Bucket.of(r, increase)
        else:
            bucket.add(r, increase)


def aggregate(readings: Iterable[StoredReading], counters: frozenset[str]) -> Rollups:
    """Every rollup recomputed directly from a final set of stored readings (unique keys)."""
    series: dict[SeriesKey, list[StoredReading]] = {}
    for r in readings:
        series.setdefault((r.device_id, r.metric), []).append(r)
    out: Rollups = {}
    for (_, metric), rows in series.items():
        rows.sort(key=lambda r: r.ts_us)
        prev: float | None = None
        for r in rows:
            increase = counter_increase(prev, r.value) if metric in counters else None
            _fold(out, r, increase)
            prev = r.value
    return out


class Store:
    """An in-memory model of the store and of the incremental fold the consumer performs per batch.

    ``apply`` does what one database transaction of ``consumers.sink`` does: insert the batch (first write
    wins), fold only the new readings, and correct the increase of old readings whose predecessor changed.
    """

    def __init__(self, counters: frozenset[str]) -> None:
        self.counters = counters
        self.rows: dict[RowKey, StoredReading] = {}
        self.rollups: Rollups = {}
        self._times: dict[SeriesKey, list[int]] = {}

    def _prev_value(self, series: SeriesKey, ts_us: int, skip: set[int] | None = None) -> float | None:
        times = self._times.get(series, [])
        i = bisect.bisect_left(times, ts_us) - 1
        while i >= 0 and skip is not None and times[i] in skip:
            i -= 1
        return None if i < 0 else self.rows[(*series, times[i])].value

    def apply(self, batch: Iterable[StoredReading]) -> list[StoredReading]:
        """Insert ``batch``, fold what is new and return the readings that were new."""
        new: dict[RowKey, StoredReading] = {}
        for r in batch:
            if r.key not in self.rows and r.key not in new:
                new[r.key] = r
        for r in new.values():
            self.rows[r.key] = r
            bisect.insort(self._times.setdefault((r.device_id, r.metric), []), r.ts_us)
        new_ts: dict[SeriesKey, set[int]] = {}
        for r in new.values():
            new_ts.setdefault((r.device_id, r.metric), set()).add(r.ts_us)
        for r in new.values():
            series = (r.device_id, r.metric)
            increase = None
            if r.metric in self.counters:
                increase = counter_increase(self._prev_value(series, r.ts_us), r.value)
            _fold(self.rollups, r, increase)
        # Old readings whose immediate predecessor is new: their increase changed.
        for series, added in new_ts.items():
            if series[1] not in self.counters:
                continue
            times = self._times[series]
            for ts in added:
                i = bisect.bisect_right(times, ts)
                if i == len(times) or times[i] in added:
                    continue
                old = self.rows[(*series, times[i])]
                before = counter_increase(self._prev_value(series, old.ts_us, skip=added), old.value)
                after = counter_increase(self._prev_value(series, old.ts_us), old.value)
                for level in LEVELS:
                    key = (old.device_id, old.metric, level, bucket_start(old.ts_us, level))
                    self.rollups[key].add_increase(after - before)
        return list(new.values())
