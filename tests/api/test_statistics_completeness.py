"""Completeness inputs of the monthly statistics at the edges of the rule, against a plain-Python truth.

Each device sits on one edge of "expected in a month" (see :mod:`api.statistics`): registered exactly at
a month start or an hour before a month ends, reporting before its registration, inactive, of a domain
the metric is not measured in, without an interval, or registered after now.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import asyncpg
import httpx
import pytest

from api import report_queries
from api.routes.statistics import StatisticsPage
from tests.api.conftest import apply, envelope, register

pytestmark = pytest.mark.integration

METRIC = "water_flow"  # a gauge of the water domain
MONTHS = [datetime(2024, m, 1, tzinfo=UTC) for m in (1, 2, 3, 4)]  # Jan..Mar and the end of March


@dataclass(frozen=True)
class Dev:
    """One registered device and when it reports ``METRIC``."""

    device_id: str
    district: str
    domain: str
    interval_s: int | None
    registered_at: datetime
    reports: tuple[datetime, ...]
    status: str = "active"


def at(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A UTC instant of 2024."""
    return datetime(2024, month, day, hour, minute, tzinfo=UTC)


DEVICES = [
    Dev("a1", "A", "water", 3600, datetime(2023, 6, 1, tzinfo=UTC), (at(1, 3), at(2, 3), at(3, 3))),
    # Registered exactly at February's start: reports in January count as readings, not as received.
    Dev("a2", "A", "water", 3600, at(2, 1), (at(1, 20), at(1, 21), at(2, 2), at(3, 9))),
    # Registered an hour before January ends: expected for that hour.
    Dev("a3", "A", "water", 600, at(1, 31, 23), (at(1, 31, 23, 30), at(2, 5))),
    Dev("a4", "A", "water", 3600, datetime(2023, 1, 1, tzinfo=UTC), (at(1, 4), at(2, 4)), "inactive"),
    Dev("a5", "A", "building", 3600, datetime(2023, 1, 1, tzinfo=UTC), (at(1, 5),)),
    Dev("a6", "A", "water", None, datetime(2023, 1, 1, tzinfo=UTC), (at(1, 6), at(3, 6))),
    # Registered mid-February, reporting before that in the same month: the month's rollup counts.
    Dev("b1", "B", "water", 86400, at(2, 15, 12), (at(2, 10), at(3, 1), at(3, 2))),
    Dev("b2", "B", "water", 3600, datetime(2099, 1, 1, tzinfo=UTC), (at(1, 7), at(2, 7))),
    Dev("b3", "B", "water", 7200, datetime(2023, 1, 1, tzinfo=UTC), ()),  # expected, silent
    # Silent without an interval: counted in devices_without_interval all the same (the rule says so).
    Dev("b4", "B", "water", None, datetime(2023, 1, 1, tzinfo=UTC), ()),
    # ... but not when the metric is not measured in its domain, or before its registration.
    Dev("b5", "B", "building", None, datetime(2023, 1, 1, tzinfo=UTC), ()),
    Dev("b6", "B", "water", None, at(3, 10), ()),
]
K = 3  # the default suppression threshold


Cells = dict[tuple[str, str | None], dict[str, Any]]


def truth(devices: list[Dev], months: list[datetime], now: datetime, by_district: bool) -> Cells:
    """The cells' counts recomputed from ``devices`` with the rule of api.statistics.

    ``months`` are the month starts followed by the end of the last month.
    """
    cells: Cells = defaultdict(
        lambda: {
            "devices_reporting": 0,
            "readings": 0,
            "devices_expected": 0,
            "readings_expected": 0.0,
            "readings_received": 0,
            "devices_without_interval": 0,
        }
    )
    for start, end in pairwise(months):
        for dev in devices:
            key = (f"{start:%Y-%m}", dev.district if by_district else "_T")
            readings = sum(1 for t in dev.reports if start <= t < end)
            held = dev.domain == "water" and dev.status != "inactive" and dev.registered_at < min(end, now)
            expected = held and dev.interval_s is not None
            if readings:
                cells[key]["devices_reporting"] += 1
                cells[key]["readings"] += readings
            if dev.interval_s is None and (readings or held):
                cells[key]["devices_without_interval"] += 1
            if expected:
                assert dev.interval_s is not None
                cells[key]["devices_expected"] += 1
                seconds = (min(end, now) - max(start, dev.registered_at)).total_seconds()
                cells[key]["readings_expected"] += max(0.0, seconds) / dev.interval_s
                cells[key]["readings_received"] += readings
    hidden = {key for key, cell in cells.items() if 0 < cell["devices_reporting"] < K}
    # Secondary suppression: a month's districts add up to the published total, so a month with one
    # suppressed district loses its smallest published one too (ties: the lowest district name).
    for month in {key[0] for key in cells} if by_district else ():
        line = [key for key in cells if key[0] == month]
        suppressed = [key for key in line if key in hidden]
        others = [key for key in line if key not in hidden and cells[key]["devices_reporting"] > 0]
        if len(suppressed) == 1 and others:
            hidden.add(min(others, key=lambda k: (cells[k]["devices_reporting"], k[1] or "")))
    for cell_key in hidden:
        # Suppressed: no count from which the cell's values could be rebuilt.
        cells[cell_key]["readings"] = cells[cell_key]["readings_received"] = None
    return dict(cells)


@pytest.fixture
async def city(database_url: str, client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    """DEVICES registered, and their readings applied through the consumer's write path."""
    await install(database_url, client, auth, DEVICES)


async def install(dsn: str, client: httpx.AsyncClient, auth: dict[str, str], devices: list[Dev]) -> None:
    """Register ``devices`` and apply their readings through the consumer's write path."""
    for dev in devices:
        await register(
            client,
            auth,
            dev.device_id,
            domain=dev.domain,
            district=dev.district,
            status=dev.status,
            expected_interval_s=dev.interval_s,
            registered_at=dev.registered_at.isoformat(),
        )
    await apply(
        dsn, [envelope(d.device_id, d.domain, [(METRIC, t, 1.5, 0)]) for d in devices for t in d.reports]
    )


@pytest.mark.usefixtures("city")
@pytest.mark.parametrize("by", ["district", None])
async def test_completeness_inputs_match_the_rule(
    client: httpx.AsyncClient, auth: dict[str, str], by: str | None
) -> None:
    before = datetime.now(UTC)
    params = {"metric": METRIC, "start": "2024-01", "end": "2024-03", **({"by": by} if by else {})}
    resp = await client.get("/v1/statistics/monthly", params=params, headers=auth)
    assert resp.status_code == 200, resp.text
    want = truth(DEVICES, MONTHS, before, by_district=by is not None)
    got = {(c["period"], c["district"]): c for c in resp.json()["items"]}
    assert set(got) == set(want)
    for key, expected in want.items():
        cell = got[key]
        assert {k: cell[k] for k in expected if k != "readings_expected"} == {
            k: v for k, v in expected.items() if k != "readings_expected"
        }, key
        assert cell["readings_expected"] == pytest.approx(expected["readings_expected"]), key
        received, owed = expected["readings_received"], expected["readings_expected"]
        assert cell["completeness"] == (
            pytest.approx(received / owed) if owed and received is not None else None
        )


@pytest.mark.usefixtures("city")
async def test_json_body_is_the_documented_model(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    """The JSON is encoded without the response model: its fields must still be exactly the model's."""
    params = {"metric": METRIC, "start": "2024-01", "end": "2024-03", "by": "district,provenance"}
    resp = await client.get("/v1/statistics/monthly", params={**params, "limit": "2"}, headers=auth)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    page = StatisticsPage.model_validate(body)
    assert list(body) == list(StatisticsPage.model_fields)
    documented = (await client.get("/openapi.json")).json()["components"]["schemas"]["StatisticsCell"]
    assert all(list(item) == list(documented["properties"]) for item in body["items"])
    assert len(page.items) == 2
    assert page.next_cursor is not None
    assert page.model_dump(mode="json") == body


async def test_devices_registered_after_now_are_not_expected(
    database_url: str, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """In the month in progress a device registered later this month owes nothing yet, even if it reports."""
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    devices = [
        Dev("c1", "C", "water", 3600, now + (end - now) / 2, (start + (now - start) / 2,)),
        Dev("c2", "C", "water", 3600, start - timedelta(days=1), (start + (now - start) / 3,)),
    ]
    await install(database_url, client, auth, devices)
    before = datetime.now(UTC)
    month = f"{start:%Y-%m}"
    params = {"metric": METRIC, "start": month, "end": month, "by": "district"}
    resp = await client.get("/v1/statistics/monthly", params=params, headers=auth)
    after = datetime.now(UTC)
    assert resp.status_code == 200, resp.text
    (cell,) = resp.json()["items"]
    # The API read the clock between `before` and `after`: the cell is the truth at some instant of that
    # span (c1 only becomes expected if the month ends within it).
    bounds = [truth(devices, [start, end], t, by_district=True)[(month, "C")] for t in (before, after)]
    counts = {k: cell[k] for k in bounds[0] if k != "readings_expected"}
    assert counts in [{k: b[k] for k in counts} for b in bounds]
    assert counts["devices_expected"] == 1 or after >= end
    low, high = sorted(b["readings_expected"] for b in bounds)
    assert low - 1e-6 <= cell["readings_expected"] <= high + 1e-6


async def test_silent_devices_without_interval_are_counted(
    database_url: str, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """The rule counts a device without an interval whether or not it reported (issue 13, point 5)."""
    old = datetime(2023, 1, 1, tzinfo=UTC)
    devices = [
        Dev("z1", "Z", "water", 3600, old, (at(1, 2),)),
        Dev("z2", "Z", "water", None, old, ()),  # silent, no interval: the worst case for coverage
        Dev("z3", "Z", "water", None, old, (at(1, 3),)),
        Dev("z4", "Z", "water", None, old, (), "inactive"),
    ]
    await install(database_url, client, auth, devices)
    params = {"metric": METRIC, "start": "2024-01", "end": "2024-01", "by": "district"}
    resp = await client.get("/v1/statistics/monthly", params=params, headers=auth)
    assert resp.status_code == 200, resp.text
    (cell,) = resp.json()["items"]
    assert (cell["devices_reporting"], cell["devices_expected"], cell["devices_without_interval"]) == (
        2,
        1,
        2,
    )


@pytest.mark.parametrize(
    ("now", "want"),
    [
        # (district, month) -> readings expected, from the production query (report_queries).
        (
            datetime(2030, 1, 1, tzinfo=UTC),
            {("full", "2024-01"): 31 * 24, ("mid", "2024-01"): 11 * 24 * 6, ("late", "2024-01"): 0},
        ),
        # January in progress: ten days owed so far; February not begun, nothing owed yet.
        (
            at(1, 11),
            {("prog", "2024-01"): 10, ("prog", "2024-02"): 0, ("late", "2024-01"): 0},
        ),
    ],
)
async def test_readings_expected_by_the_production_query(
    database_url: str,
    client: httpx.AsyncClient,
    auth: dict[str, str],
    now: datetime,
    want: dict[tuple[str, str], float],
) -> None:
    """The rule's ``expected`` on exact cases: registered before, mid-month, after; month in progress."""
    devices = [
        Dev("e1", "full", "water", 3600, at(1, 1) - timedelta(days=5), ()),
        Dev("e2", "mid", "water", 600, at(1, 21), ()),
        Dev("e3", "prog", "water", 86400, at(1, 1), ()),
        Dev("e4", "late", "water", 60, at(2, 1), ()),  # registered after January
    ]
    await install(database_url, client, auth, devices)
    months = [(at(1, 1), at(2, 1)), (at(2, 1), at(3, 1))]
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=1, server_settings={"timezone": "UTC"}
    )
    try:
        rows = await report_queries.monthly_statistics(
            pool, METRIC, months, now, ("water",), ["district"], [None, None, None]
        )
    finally:
        await pool.close()
    got = {(r["district"], f"{r['period']:%Y-%m}"): r["expected"] for r in rows}
    for key, expected in want.items():
        assert got.get(key, 0) == pytest.approx(expected), key
