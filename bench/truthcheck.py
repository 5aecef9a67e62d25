"""The store compared with the simulator's truth file, series by series: raw readings, each rollup level
and, for a sample of series, the API's answer.

The truth (``simulator.truth.Truth.to_dict``) holds per device and metric the count of distinct
readings, their sum, extremes, first and last time, how many were out of range or sent in another unit
and, for counters, the reset-aware increase. The same totals are computed from the raw table (the
increase with the database's own ``counter_increase`` over the readings in time order) and from the sum
of each rollup level's buckets; every one must equal the truth (sums to 1e-9 relative: float addition
order, and unit conversions land within 1e-12 of the canonical value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields
from datetime import timedelta
from typing import Any, Final

import asyncpg
import httpx

from consumers.rollup import LEVELS
from core.catalogue import load_catalogue
from core.readings import from_us, to_us
from core.types import FLAGGED_MASK, ROLLUP_TABLES, ReadingFlag

SeriesKey = tuple[str, str]

_RAW: Final = """
SELECT device_id, metric, count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max,
       min(ts) AS first_ts, max(ts) AS last_ts, count(*) FILTER (WHERE flags & $2 <> 0) AS flagged,
       sum(inc) AS increase, count(*) FILTER (WHERE flags & $4 <> 0) AS converted
FROM (
    SELECT device_id, metric, ts, value, flags,
           CASE WHEN metric = ANY($3::text[])
                THEN counter_increase(lag(value) OVER (PARTITION BY device_id, metric ORDER BY ts), value)
           END AS inc
    FROM readings WHERE device_id = ANY($1::text[])
) s
GROUP BY device_id, metric
"""

_ROLLUP: Final = """
SELECT device_id, metric, sum(count) AS count, sum(sum) AS sum, min(min) AS min, max(max) AS max,
       min(first_ts) AS first_ts, max(last_ts) AS last_ts, sum(flagged) AS flagged, sum(increase) AS increase
FROM {table} WHERE device_id = ANY($1::text[])
GROUP BY device_id, metric
"""


@dataclass(frozen=True, slots=True)
class Totals:
    """What the store holds, or must hold, for one series."""

    count: int
    sum: float
    min: float
    max: float
    first_ts_us: int
    last_ts_us: int
    flagged: int
    increase: float | None
    converted: int | None
    """Readings flagged UNIT_CONVERTED: the raw table keeps the flag, the rollups do not (None)."""


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
        )
    return a == b


def expected_totals(truth: Mapping[str, Any]) -> dict[SeriesKey, Totals]:
    """Per-series totals of a truth document."""
    out = {}
    for device, metrics in truth["series"].items():
        for metric, s in metrics.items():
            out[(device, metric)] = Totals(
                s["count"], s["sum"], s["min"], s["max"], s["first_ts_us"], s["last_ts_us"],
                s["out_of_range"], s.get("increase"), s.get("unit_converted"),
            )  # fmt: skip
    return out


def _totals(row: asyncpg.Record) -> Totals:
    return Totals(
        int(row["count"]), float(row["sum"]), float(row["min"]), float(row["max"]),
        to_us(row["first_ts"]), to_us(row["last_ts"]), int(row["flagged"]),
        None if row["increase"] is None else float(row["increase"]),
        None if row.get("converted") is None else int(row["converted"]),
    )  # fmt: skip


async def stored_totals(conn: asyncpg.Connection, devices: list[str]) -> dict[str, dict[SeriesKey, Totals]]:
    """Per-series totals of the raw table and of each rollup level, for ``devices``."""
    counters = sorted(name for name, spec in load_catalogue().items() if spec.kind == "counter")
    rows = await conn.fetch(_RAW, devices, FLAGGED_MASK, counters, int(ReadingFlag.UNIT_CONVERTED))
    out = {"raw": {(r["device_id"], r["metric"]): _totals(r) for r in rows}}
    for level in LEVELS:
        # The table name comes from a constant mapping.
        rows = await conn.fetch(_ROLLUP.format(table=ROLLUP_TABLES[level]), devices)
        out[level] = {(r["device_id"], r["metric"]): _totals(r) for r in rows}
    return out


def differences(
    source: str, actual: Mapping[SeriesKey, Totals], expected: Mapping[SeriesKey, Totals]
) -> list[str]:
    """One line per series whose totals differ (or that only one side has)."""
    lines = []
    names = [f.name for f in fields(Totals)]
    for key in sorted(set(actual) | set(expected)):
        a, e = actual.get(key), expected.get(key)
        if a is None or e is None:
            lines.append(f"{source} {key[0]}/{key[1]}: stored={a} truth={e}")
            continue
        wrong = [
            f"{name} stored={x!r} truth={y!r}"
            for name, x, y in zip(names, astuple(a), astuple(e), strict=True)
            if not _same(x, y) and not (name == "converted" and None in (x, y))
        ]
        if wrong:
            lines.append(f"{source} {key[0]}/{key[1]}: " + ", ".join(wrong))
    return lines


async def check_store(dsn: str, truth: Mapping[str, Any]) -> tuple[int, list[str]]:
    """(series compared, differences) between the store and ``truth`` for the truth's devices."""
    expected = expected_totals(truth)
    devices = sorted(set(truth["devices"]) | set(truth["series"]))
    conn = await asyncpg.connect(dsn)
    try:
        stored = await stored_totals(conn, devices)
    finally:
        await conn.close()
    diffs = []
    for source, actual in stored.items():
        diffs += differences(source, actual, expected)
    return len(expected), diffs


async def check_api(api: str, key: str, truth: Mapping[str, Any], sample: int) -> tuple[int, list[str]]:
    """(series compared, differences) between ``GET /v1/series`` (hourly) and the truth, for every n-th
    series so that about ``sample`` are asked."""
    expected = expected_totals(truth)
    keys = sorted(expected)
    step = max(1, len(keys) // max(sample, 1))
    diffs = []
    async with httpx.AsyncClient(
        base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        for device, metric in keys[::step]:
            e = expected[(device, metric)]
            params: dict[str, str | int] = {
                "device_id": device,
                "metric": metric,
                "bucket": "1h",
                "start": from_us(e.first_ts_us - e.first_ts_us % 3_600_000_000).isoformat(),
                "end": (from_us(e.last_ts_us) + timedelta(hours=1)).isoformat(),
                "limit": 1000,
            }
            resp = await client.get("/v1/series", params=params)
            if resp.status_code != 200:
                diffs.append(f"api {device}/{metric}: HTTP {resp.status_code} {resp.text[:200]}")
                continue
            points = resp.json()["items"]
            count = sum(int(p["count"]) for p in points)
            total = sum(float(p["sum"]) for p in points)
            if count != e.count or not _same(total, e.sum):
                diffs.append(
                    f"api {device}/{metric}: count={count} sum={total} truth count={e.count} sum={e.sum}"
                )
    return len(keys[::step]), diffs
