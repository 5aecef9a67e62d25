"""Devices, series and aggregates against a store filled through the consumer's batch transaction."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.api.conftest import apply, envelope, register
from tests.api.truth import Sent, fold

pytestmark = pytest.mark.integration

T0 = datetime(2024, 1, 31, 20, tzinfo=UTC)  # crosses an hour, a day and a month boundary
DISTRICT = {"w1": "north", "w2": "north", "w3": "north", "w4": "south"}


def make_readings(seed: int = 5) -> list[Sent]:
    """Water devices every 20 minutes for 9 hours: a flow gauge and a volume counter that resets once."""
    rnd = random.Random(seed)  # noqa: S311 - test data, not secrets
    sent: list[Sent] = []
    for device in DISTRICT:
        volume = rnd.randint(0, 100) / 4
        for step in range(27):
            ts = T0 + timedelta(minutes=20 * step)
            flow = rnd.randint(0, 400) / 4
            flags = 1 if step == 5 else 0
            volume = volume + rnd.randint(0, 20) / 4 if step != 13 else 1.25  # a meter restart
            sent += [(device, "water_flow", ts, flow, flags), (device, "water_volume_m3", ts, volume, 0)]
    return sent


async def fill(dsn: str, sent: list[Sent]) -> None:
    """Apply in three out-of-order batches (the later half first), each reading its own envelope."""
    envs = [envelope(d, "water", [(m, ts, v, f)]) for d, m, ts, v, f in sent]
    half = len(envs) // 2
    await apply(dsn, envs[half:], first=0)
    await apply(dsn, envs[:half], first=len(envs))
    await apply(dsn, envs[:10], first=0)  # a replay changes nothing


async def get(client: httpx.AsyncClient, auth: dict[str, str], path: str, **params: Any) -> Any:
    resp = await client.get(path, params=params, headers=auth)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def all_pages(client: httpx.AsyncClient, auth: dict[str, str], path: str, **params: Any) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        page = await get(client, auth, path, **params, **({"cursor": cursor} if cursor else {}))
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
async def filled(database_url: str, client: httpx.AsyncClient, auth: dict[str, str]) -> list[Sent]:
    sent = make_readings()
    await fill(database_url, sent)
    for device, district in DISTRICT.items():
        provenance = "citizen" if device == "w3" else "official"
        await register(client, auth, device, domain="water", district=district, provenance=provenance)
    return sent


@pytest.mark.parametrize("bucket", ["1h", "1d", "1mo"])
async def test_series_matches_the_readings(
    client: httpx.AsyncClient, auth: dict[str, str], filled: list[Sent], bucket: str
) -> None:
    for metric in ("water_flow", "water_volume_m3"):
        truth = fold(filled, bucket)
        points = await all_pages(
            client,
            auth,
            "/v1/series",
            device_id="w2",
            metric=metric,
            bucket=bucket,
            limit=2,
            start="2024-01-01T00:00:00Z",
            end="2024-03-01T00:00:00Z",
        )
        expected = sorted((k[0], acc) for k, acc in truth.items() if k[1] == metric and k[2] == "w2")
        assert [ts(p["time"]) for p in points] == [b for b, _ in expected]
        for p, (_, acc) in zip(points, expected, strict=True):
            assert (p["count"], p["min"], p["max"], p["flagged"]) == (
                acc.count,
                min(acc.values),
                max(acc.values),
                acc.flagged,
            )
            assert p["sum"] == sum(acc.values)
            assert p["mean"] == pytest.approx(sum(acc.values) / acc.count)
            if metric == "water_volume_m3":
                assert p["increase"] == pytest.approx(acc.increase)
            else:
                assert p["increase"] is None


async def test_raw_series_and_its_limits(
    client: httpx.AsyncClient, auth: dict[str, str], filled: list[Sent]
) -> None:
    points = await all_pages(
        client,
        auth,
        "/v1/series",
        device_id="w4",
        metric="water_flow",
        bucket="raw",
        limit=5,
        start="2024-01-31T21:00:00Z",
        end="2024-02-01T01:00:00Z",
    )
    lo, hi = datetime(2024, 1, 31, 21, tzinfo=UTC), datetime(2024, 2, 1, 1, tzinfo=UTC)
    expected = sorted((t, v) for d, m, t, v, _ in filled if d == "w4" and m == "water_flow" and lo <= t < hi)
    assert [(ts(p["time"]), p["mean"]) for p in points] == expected
    resp = await client.get(
        "/v1/series",
        headers=auth,
        params={
            "device_id": "w4",
            "metric": "water_flow",
            "bucket": "raw",
            "start": "2024-01-01T00:00:00Z",
            "end": "2024-02-01T00:00:00Z",
        },
    )
    assert resp.status_code == 400
    assert resp.json()["title"] == "Raw range too wide"
    assert "bucket=1h" in resp.json()["detail"]


@pytest.mark.parametrize(
    ("params", "status", "title"),
    [
        ({"metric": "nope"}, 400, "Unknown metric"),
        ({"start": "2024-02-02T00:00:00Z"}, 400, "Empty time range"),
        ({"bucket": "2h"}, 422, "Invalid request"),
        ({"start": "2024-01-01T00:00:00"}, 400, "Time without offset"),
        ({"device_id": "ghost"}, 404, "Unknown device"),
        ({"cursor": "garbage"}, 400, "Invalid cursor"),
    ],
)
@pytest.mark.usefixtures("filled")
async def test_series_errors_are_problems(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    params: dict[str, str],
    status: int,
    title: str,
) -> None:
    query = {
        "device_id": "w1",
        "metric": "water_flow",
        "start": "2024-01-01T00:00:00Z",
        "end": "2024-02-01T00:00:00Z",
        **params,
    }
    resp = await client.get("/v1/series", params=query, headers=auth)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert resp.headers["content-type"] == "application/problem+json"
    assert body["title"] == title
    assert body["status"] == status
    assert body["detail"]


@pytest.mark.parametrize("group_by", ["", "district", "district,provenance"])
async def test_aggregates_group_as_asked(
    client: httpx.AsyncClient, auth: dict[str, str], filled: list[Sent], group_by: str
) -> None:
    provenance = {d: ("citizen" if d == "w3" else "official") for d in DISTRICT}
    groups = [g for g in group_by.split(",") if g]
    truth = fold(filled, "1h", groups, district=DISTRICT, provenance=provenance)
    items = await all_pages(
        client,
        auth,
        "/v1/aggregates",
        metric="water_volume_m3",
        bucket="1h",
        limit=4,
        start="2024-01-31T00:00:00Z",
        end="2024-02-02T00:00:00Z",
        **({"group_by": group_by} if groups else {}),
    )
    got = {(ts(i["time"]), *(i[g] for g in groups)): i for i in items}
    want = {(k[0], *k[2:]): acc for k, acc in truth.items() if k[1] == "water_volume_m3"}
    assert set(got) == set(want)
    for k, acc in want.items():
        item = got[k]
        assert (item["devices"], item["count"], item["min"], item["max"]) == (
            len(acc.devices),
            acc.count,
            min(acc.values),
            max(acc.values),
        )
        assert item["sum"] == sum(acc.values)
        assert item["increase"] == pytest.approx(acc.increase)
        for dim in {"district", "domain", "provenance"} - set(groups):
            assert item[dim] == "_T"


async def test_aggregates_filters_and_errors(
    client: httpx.AsyncClient, auth: dict[str, str], filled: list[Sent]
) -> None:
    south = await all_pages(
        client,
        auth,
        "/v1/aggregates",
        metric="water_flow",
        bucket="1mo",
        district="south",
        start="2024-01-01T00:00:00Z",
        end="2024-03-01T00:00:00Z",
    )
    assert [i["devices"] for i in south] == [1, 1]
    assert sum(i["count"] for i in south) == sum(1 for d, m, *_ in filled if d == "w4" and m == "water_flow")
    resp = await client.get(
        "/v1/aggregates",
        headers=auth,
        params={
            "metric": "water_flow",
            "group_by": "street",
            "start": "2024-01-01T00:00:00Z",
            "end": "2024-02-01T00:00:00Z",
        },
    )
    assert resp.status_code == 400
    assert "street" in resp.json()["detail"]


async def test_devices_register_list_and_latest(
    client: httpx.AsyncClient, auth: dict[str, str], filled: list[Sent]
) -> None:
    before = await get(client, auth, "/v1/devices/w1")
    assert before["first_seen"] is not None
    assert before["status"] == "active"
    # Updating metadata never touches what the consumer maintains.
    resp = await client.put(
        "/v1/devices/w1",
        headers=auth,
        json={
            "domain": "water",
            "district": "east",
            "lat": 50.5,
            "lon": 4.25,
            "expected_interval_s": 1200,
            "status": "inactive",
        },
    )
    assert resp.status_code == 200
    after = resp.json()
    assert (after["district"], after["lat"], after["status"]) == ("east", 50.5, "inactive")
    for col in ("first_seen", "last_seen", "last_reading_at", "registered_at"):
        assert after[col] == before[col]
    new = await client.put("/v1/devices/new-1", headers=auth, json={"domain": "power"})
    assert new.status_code == 201
    assert new.json()["status"] == "active"
    assert new.json()["first_seen"] is None
    bad = await client.put("/v1/devices/x", headers=auth, json={"domain": "power", "lat": 1.0})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"

    everything = await all_pages(client, auth, "/v1/devices", limit=2)
    assert [d["device_id"] for d in everything] == ["new-1", "w1", "w2", "w3", "w4"]
    north = await all_pages(client, auth, "/v1/devices", district="north", provenance="official")
    assert [d["device_id"] for d in north] == ["w2"]
    assert [d["device_id"] for d in await all_pages(client, auth, "/v1/devices", status="inactive")] == ["w1"]

    latest = await get(client, auth, "/v1/devices/w3/latest")
    last = {
        m: max((t, v) for d, mm, t, v, _ in filled if d == "w3" and mm == m)
        for m in ("water_flow", "water_volume_m3")
    }
    assert {m["metric"]: (ts(m["time"]), m["value"]) for m in latest["metrics"]} == last
    missing = await client.get("/v1/devices/ghost/latest", headers=auth)
    assert missing.status_code == 404


async def test_nul_characters_are_client_errors(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    # PostgreSQL text cannot hold U+0000: a query parameter or a body field with one is the caller's
    # mistake (422 problem), never a 500. Found by the schemathesis run.
    listing = await client.get("/v1/devices", params={"district": "a\x00b"}, headers=auth)
    assert listing.status_code == 422, listing.text
    assert listing.headers["content-type"] == "application/problem+json"
    assert "NUL" in listing.json()["detail"]
    put = await client.put("/v1/devices/nul-1", headers=auth, json={"domain": "power", "site": "x\x00y"})
    assert put.status_code == 422, put.text
    assert put.headers["content-type"] == "application/problem+json"
