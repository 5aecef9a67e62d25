"""The rollup rules: bucket boundaries, counter increases, incremental folding == recomputation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.rollup import (
    LEVELS,
    Store,
    StoredReading,
    aggregate,
    bucket_start,
    counter_increase,
    is_flagged,
)
from core.readings import from_us, to_us
from core.types import ReadingFlag

COUNTERS = frozenset({"energy"})


def us(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return to_us(datetime(year, month, day, hour, minute, second, tzinfo=UTC))


@pytest.mark.parametrize(
    ("ts", "level", "start"),
    [
        (us(2024, 3, 1, 0, 0), "hourly", us(2024, 3, 1, 0)),
        (us(2024, 3, 1, 0, 59, 59) + 999_999, "hourly", us(2024, 3, 1, 0)),
        (us(2024, 3, 1, 23, 59), "daily", us(2024, 3, 1)),
        (us(2024, 2, 29, 12), "monthly", us(2024, 2, 1)),  # leap day
        (us(2024, 3, 1), "monthly", us(2024, 3, 1)),
        (us(2024, 3, 1) - 1, "monthly", us(2024, 2, 1)),
        (us(2023, 12, 31, 23, 59, 59), "monthly", us(2023, 12, 1)),
        (us(2024, 1, 31, 23), "monthly", us(2024, 1, 1)),  # a 30-day bucket would split January
        (us(1969, 12, 31, 23, 30), "hourly", us(1969, 12, 31, 23)),  # before the epoch
        (us(1969, 12, 31, 23, 30), "daily", us(1969, 12, 31)),
        (us(1969, 12, 15), "monthly", us(1969, 12, 1)),
    ],
)
def test_bucket_start_examples(ts: int, level: str, start: int) -> None:
    assert bucket_start(ts, level) == start  # type: ignore[arg-type]


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive by design
        max_value=datetime(2200, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    )
)
def test_bucket_contains_ts_and_is_aligned(ts: datetime) -> None:
    ts_us = to_us(ts)
    for level in LEVELS:
        start = from_us(bucket_start(ts_us, level))
        assert start <= ts
        if level == "hourly":
            assert start == ts.replace(minute=0, second=0, microsecond=0)
        elif level == "daily":
            assert start == ts.replace(hour=0, minute=0, second=0, microsecond=0)
        else:
            assert start == ts.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            assert (start + timedelta(days=32)).replace(day=1) > ts


def test_counter_increase_rule() -> None:
    assert counter_increase(None, 500.0) == 0.0
    assert counter_increase(100.0, 100.0) == 0.0
    assert counter_increase(100.0, 112.5) == 12.5
    assert counter_increase(100.0, 3.0) == 3.0  # reset: counted from zero
    assert counter_increase(100.0, 0.0) == 0.0
    assert counter_increase(100.0, -4.0) == 0.0  # never a negative consumption


def test_flagged() -> None:
    assert is_flagged(ReadingFlag.OUT_OF_RANGE)
    assert is_flagged(ReadingFlag.NO_TIMESTAMP | ReadingFlag.UNIT_CONVERTED)
    assert not is_flagged(ReadingFlag.UNIT_CONVERTED)
    assert not is_flagged(0)


def test_aggregate_example_with_reset_and_month_boundary() -> None:
    base = us(2024, 1, 31, 23, 0)
    rows = [
        StoredReading("m1", "energy", base, 100.0),
        StoredReading("m1", "energy", base + 30 * 60_000_000, 110.0, int(ReadingFlag.OUT_OF_RANGE)),
        StoredReading("m1", "energy", base + 60 * 60_000_000, 4.0),  # Feb 1 00:00, reset
        StoredReading("m1", "energy", base + 90 * 60_000_000, 6.5),
        StoredReading("t1", "temp", base, 20.0),
    ]
    out = aggregate(reversed(rows), COUNTERS)
    jan_h = out[("m1", "energy", "hourly", base)]
    assert (jan_h.count, jan_h.sum, jan_h.min, jan_h.max, jan_h.flagged) == (2, 210.0, 100.0, 110.0, 1)
    assert (jan_h.first_value, jan_h.last_value, jan_h.increase) == (100.0, 110.0, 10.0)
    assert out[("m1", "energy", "monthly", us(2024, 1, 1))].increase == 10.0
    feb = out[("m1", "energy", "monthly", us(2024, 2, 1))]
    assert (feb.count, feb.increase, feb.first_value, feb.last_value) == (2, 4.0 + 2.5, 4.0, 6.5)
    assert out[("t1", "temp", "daily", us(2024, 1, 31))].increase is None


def test_late_reading_replaces_successor_increase() -> None:
    h = 3_600_000_000
    t0 = us(2024, 5, 1)
    store = Store(COUNTERS)
    store.apply([StoredReading("m", "energy", t0, 10.0), StoredReading("m", "energy", t0 + 2 * h, 30.0)])
    assert store.rollups[("m", "energy", "hourly", t0 + 2 * h)].increase == 20.0
    # A late reading between them: 10 -> 25 -> 30; consumption stays 20 in total.
    store.apply([StoredReading("m", "energy", t0 + h, 25.0)])
    assert store.rollups[("m", "energy", "hourly", t0 + h)].increase == 15.0
    assert store.rollups[("m", "energy", "hourly", t0 + 2 * h)].increase == 5.0
    assert store.rollups[("m", "energy", "daily", t0)].increase == 20.0
    # Retransmissions change nothing, even with another value (first write wins).
    assert store.apply([StoredReading("m", "energy", t0 + h, 99.0)]) == []
    assert store.rollups == aggregate(store.rows.values(), COUNTERS)


def test_late_reading_before_first_reading() -> None:
    t0 = us(2024, 5, 1, 12)
    store = Store(COUNTERS)
    store.apply([StoredReading("m", "energy", t0, 50.0)])
    store.apply([StoredReading("m", "energy", t0 - 86_400_000_000, 40.0)])
    assert store.rollups[("m", "energy", "daily", bucket_start(t0, "daily"))].increase == 10.0
    assert store.rollups == aggregate(store.rows.values(), COUNTERS)


# Values are multiples of 1/4 below 2**20 so that float sums are exact in any order and the
# comparison can be exact too.
values = st.integers(min_value=-8, max_value=4000).map(lambda i: i / 4)
readings = st.builds(
    StoredReading,
    device_id=st.sampled_from(["a", "b"]),
    metric=st.sampled_from(["energy", "temp"]),
    # Times around a month boundary, at 20-minute resolution, so buckets at every level are shared.
    ts_us=st.integers(min_value=-40, max_value=40).map(lambda k: us(2024, 3, 1) + k * 1_200_000_000),
    value=values,
    flags=st.sampled_from([0, 1, 2, 4, 5]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(readings, max_size=12), max_size=10))
def test_incremental_fold_equals_recomputation(batches: list[list[StoredReading]]) -> None:
    """Any arrival order, batching, retransmission (even with other values) folds to the recomputed truth."""
    store = Store(COUNTERS)
    first_seen: dict[tuple[str, str, int], StoredReading] = {}
    for batch in batches:
        for r in batch:
            first_seen.setdefault(r.key, r)
        store.apply(batch)
    assert store.rows == first_seen
    assert store.rollups == aggregate(first_seen.values(), COUNTERS)


@settings(max_examples=200, deadline=None)
@given(st.lists(values, min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_counter_total_is_order_independent(series: list[float], rnd: object) -> None:
    """Total consumption of a series is the same whatever order its readings arrive in."""
    rows = [StoredReading("m", "energy", us(2024, 1, 1) + i * 900_000_000, v) for i, v in enumerate(series)]
    shuffled = list(rows)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    store = Store(COUNTERS)
    for r in shuffled:
        store.apply([r])
    total = sum(b.increase or 0.0 for (_, _, level, _), b in store.rollups.items() if level == "monthly")
    expected = sum(counter_increase(None if i == 0 else series[i - 1], v) for i, v in enumerate(series))
    assert total == expected
    assert total >= 0
