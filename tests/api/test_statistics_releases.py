"""Published releases: immutable bodies, revisions with causes, provisional figures, secondary suppression."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from api.app import create_app
from api.keys import create_api_key
from api.settings import ApiSettings
from api.statistics_cache import StatisticsCache
from api.statistics_source import View, load_cells
from core.catalogue import load_catalogue
from tests.api.conftest import apply, envelope, register, started
from tests.api.test_statistics_endpoints import volumes
from tests.api.truth import increases

pytestmark = pytest.mark.integration

JAN = datetime(2024, 1, 1, tzinfo=UTC)
FEB = datetime(2024, 2, 1, tzinfo=UTC)
METRIC = "water_volume_m3"
BYS = (
    "",
    "district",
    "domain",
    "provenance",
    "district,domain",
    "district,provenance",
    "domain,provenance",
    "district,domain,provenance",
)
KEYS = ("period", "district", "domain", "provenance")
IGNORED = ("release", "suppressed")


async def _register_town(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    registered = "2023-12-01T00:00:00Z"
    devices = [(d, "north", "official") for d in ("n1", "n2", "n3")]
    devices += [(d, "west", "official") for d in ("w1", "w2", "w3")] + [("wc", "west", "citizen")]
    for device, district, provenance in devices:
        await register(
            client, auth, device, domain="water", district=district, provenance=provenance,
            expected_interval_s=21600, registered_at=registered,
        )  # fmt: skip


@pytest.fixture
async def town(database_url: str, client: httpx.AsyncClient, auth: dict[str, str]) -> list[Any]:
    """north: 3 official meters; west: 3 official meters and 1 citizen meter (its cells are suppressed).
    Every meter reports every 6 h in January; north reports in February too."""
    await _register_town(client, auth)
    sent: list[Any] = []
    for i, d in enumerate(("n1", "n2", "n3", "w1", "w2", "w3", "wc")):
        sent += volumes(d, JAN + timedelta(minutes=i), timedelta(hours=6), 124)
    for d in ("n1", "n2", "n3"):
        sent += volumes(d, FEB, timedelta(hours=6), 8)
    await apply(database_url, [envelope(d, "water", [(m, t, v, f)]) for d, m, t, v, f in sent])
    return sent


async def get(client: httpx.AsyncClient, auth: dict[str, str], **params: str) -> httpx.Response:
    query = {"metric": METRIC, "start": "2024-01", "end": "2024-01", **params}
    return await client.get("/v1/statistics/monthly", params=query, headers=auth)


async def bodies(
    client: httpx.AsyncClient, auth: dict[str, str], **params: str
) -> dict[tuple[str, str], bytes]:
    """Every breakdown in every format, as bytes."""
    out = {}
    for by in BYS:
        for fmt in ("json", "csv", "sdmx-csv"):
            resp = await get(client, auth, by=by, format=fmt, **params)
            assert resp.status_code == 200, resp.text
            out[(by, fmt)] = resp.content
    return out


SDMX_DATA = f"/sdmx/data/CITY_SENSORS_MONTHLY/M....{METRIC}."
SDMX_FORMATS = ("genericdata", "structurespecificdata", "csvfile", "csv2")


async def sdmx_bodies(client: httpx.AsyncClient, auth: dict[str, str], **params: str) -> dict[str, bytes]:
    """January's SDMX data of every breakdown (the key's wildcards) in every format, as bytes."""
    out = {}
    for fmt in SDMX_FORMATS:
        query = {"startPeriod": "2024-01", "endPeriod": "2024-01", "format": fmt, **params}
        resp = await client.get(SDMX_DATA, params=query, headers=auth)
        assert resp.status_code == 200, resp.text
        out[fmt] = resp.content
    return out


def sdmx_rows(body: bytes) -> list[dict[str, str]]:
    """The rows of an SDMX-CSV 1.0 message."""
    return list(csv.DictReader(io.StringIO(body.decode())))


async def release(client: httpx.AsyncClient, auth: dict[str, str], **body: Any) -> httpx.Response:
    return await client.post("/v1/statistics/releases", json={"note": "test", **body}, headers=auth)


def cells_of(client_json: dict[str, Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {tuple(c[k] for k in KEYS): c for c in client_json["items"]}


@pytest.mark.usefixtures("town")
async def test_secondary_suppression_defeats_the_subtraction_attack(
    client: httpx.AsyncClient, auth: dict[str, str], town: list[Any]
) -> None:
    """west's total minus its published official cell was the citizen meter's consumption, exactly."""
    inc = increases(town)
    citizen = sum(v for (device, _, ts), v in inc.items() if device == "wc" and ts < FEB)
    total = cells_of((await get(client, auth, by="district")).json())[("2024-01", "west", "_T", "_T")]
    assert total["obs_status"] == "P"
    assert total["total_consumption"] is not None
    line = [
        c
        for c in (await get(client, auth, by="district,provenance")).json()["items"]
        if c["district"] == "west"
    ]
    recovered = total["total_consumption"] - sum(
        c["total_consumption"] for c in line if c["total_consumption"] is not None
    )
    assert recovered != pytest.approx(citizen, abs=1e-3)
    status = {c["provenance"]: (c["obs_status"], c["conf_status"]) for c in line}
    assert status == {"citizen": ("Q", "C"), "official": ("Q", "D")}
    # A filter reads the same table: filtering never reveals what the whole table hides.
    filtered = (await get(client, auth, by="provenance", district="west")).json()["items"]
    assert {c["provenance"]: (c["district"], c["obs_status"]) for c in filtered} == {
        "citizen": ("west", "Q"),
        "official": ("west", "Q"),
    }


async def test_release_revise_and_cite(
    database_url: str, client: httpx.AsyncClient, auth: dict[str, str], town: list[Any]
) -> None:
    """The issue's test: release January, deliver late readings and change the registry, release again."""
    before = (await get(client, auth, by="district")).json()
    assert {c["obs_status"] for c in before["items"]} == {"P"}
    assert {c["release"] for c in before["items"]} == {None}

    first = await release(client, auth, months=["2024-01"], note="January, first estimate")
    assert first.status_code == 201, first.text
    assert first.headers["location"] == "/v1/statistics/releases/1"
    one = first.json()
    assert (one["release"], one["months"], one["note"], one["revisions"]) == (
        1,
        ["2024-01"],
        "January, first estimate",
        0,
    )
    assert one["metrics"] == sorted(load_catalogue())
    released = await bodies(client, auth, release="1")
    sdmx_released = await sdmx_bodies(client, auth, release="1")
    assert {r["OBS_STATUS"] for r in sdmx_rows(sdmx_released["csvfile"])} <= {"A", "Q", "O"}
    sdmx_feb = await client.get(
        SDMX_DATA,
        params={"startPeriod": "2024-02", "endPeriod": "2024-02", "format": "csvfile"},
        headers=auth,
    )
    assert sdmx_feb.status_code == 200, sdmx_feb.text
    assert "P" in {r["OBS_STATUS"] for r in sdmx_rows(sdmx_feb.content)}
    released_feb = await client.get(
        SDMX_DATA,
        params={"startPeriod": "2024-02", "endPeriod": "2024-02", "format": "csvfile", "release": "1"},
        headers=auth,
    )
    assert released_feb.status_code == 404  # release 1 holds January only
    whole = await client.get(SDMX_DATA, params={"format": "csvfile", "release": "1"}, headers=auth)
    assert whole.status_code == 200, whole.text
    assert {r["TIME_PERIOD"] for r in sdmx_rows(whole.content)} == {"2024-01"}  # the release's months
    assert whole.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "cache-control" not in sdmx_feb.headers  # provisional figures change
    now = (await get(client, auth, by="district")).json()
    assert {c["release"] for c in now["items"]} == {1}
    assert "P" not in {c["obs_status"] for c in now["items"]}
    assert now["items"] == (await get(client, auth, by="district", release="1")).json()["items"]
    # February was not released: still provisional.
    feb = (await get(client, auth, by="district", start="2024-02", end="2024-02")).json()["items"]
    assert {(c["district"], c["obs_status"], c["release"]) for c in feb} >= {("north", "P", None)}

    # Late readings for n1 (equal to the previous register value: no consumption added), a new silent
    # meter registered in east for all of January, and another suppression k for the API.
    late = [(t, v) for d, _, t, v, _ in town if d == "n1" and t < FEB][:5]
    await apply(
        database_url,
        [envelope("n1", "water", [(METRIC, t + timedelta(hours=1), v, 0)]) for t, v in late],
        first=100_000,
    )
    await register(
        client, auth, "e1", domain="water", district="east", provenance="official",
        expected_interval_s=86400, registered_at="2023-06-01T00:00:00Z",
    )  # fmt: skip
    changed = create_app(ApiSettings(database_url=database_url, suppression_k=2))
    async for other in started(changed):
        assert await bodies(other, auth, release="1") == released
        assert await bodies(other, auth, asOf=one["published_at"]) == released
        assert await sdmx_bodies(other, auth, release="1") == sdmx_released

    second = await release(client, auth, months=["2024-01"], note="January, late readings")
    assert second.status_code == 201, second.text
    assert second.json()["release"] == 2
    assert await bodies(client, auth, release="1") == released
    assert await sdmx_bodies(client, auth, release="1") == sdmx_released
    # SDMX updatedAfter: only the observations release 2 revised or added (north's late readings, the
    # city total they change, and east, new), none of the unchanged west.
    revised = await client.get(
        SDMX_DATA.replace("M....", "M.._T._T."),
        params={"format": "csvfile", "updatedAfter": one["published_at"]},
        headers=auth,
    )
    assert revised.status_code == 200, revised.text
    assert {r["REF_AREA"] for r in sdmx_rows(revised.content)} == {"north", "east", "_T"}
    assert {r["TIME_PERIOD"] for r in sdmx_rows(revised.content)} == {"2024-01"}

    # The revision log lists exactly the published fields that differ between the two releases.
    expected: dict[tuple[Any, ...], tuple[Any, Any]] = {}
    for by in BYS:
        old = cells_of((await get(client, auth, by=by, release="1")).json())
        new = cells_of((await get(client, auth, by=by, release="2")).json())
        for key in old.keys() | new.keys():
            a, b = old.get(key, {}), new.get(key, {})
            for name in a or b:
                if name in KEYS or name in IGNORED or a.get(name) == b.get(name):
                    continue
                expected[(by, *key[1:], name)] = (a.get(name), b.get(name))
    resp = await client.get(
        "/v1/statistics/revisions", params={"period": "2024-01", "metric": METRIC}, headers=auth
    )
    assert resp.status_code == 200, resp.text
    rows = resp.json()["items"]
    got = {
        (",".join(r["by"]), r["district"], r["domain"], r["provenance"], r["field"]): (
            r["old_value"],
            r["new_value"],
        )
        for r in rows
    }
    assert got == expected
    assert {r["release"] for r in rows} == {2}
    assert {r["previous_release"] for r in rows} == {1}
    assert second.json()["revisions"] >= len(rows)
    causes = {(",".join(r["by"]), r["district"], r["domain"], r["provenance"]): r["cause"] for r in rows}
    assert causes[("district", "north", "_T", "_T")] == "late_readings"
    assert causes[("district", "east", "_T", "_T")] == "registry"
    assert ("district", "west", "_T", "_T") not in causes
    north = {r["field"]: r for r in rows if r["by"] == ["district"] and r["district"] == "north"}
    assert (north["readings"]["old_value"], north["readings"]["new_value"]) == (372, 377)
    assert "total_consumption" not in north

    # updatedAfter (the SDMX side's view): only what release 2 made new or revised.
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=2, server_settings={"timezone": "UTC"}
    )
    try:
        spec = load_catalogue()[METRIC]
        settings = ApiSettings(database_url=database_url)
        months = [(JAN, FEB)]
        after_one = datetime.fromisoformat(one["published_at"])
        updated = await load_cells(
            pool, settings, StatisticsCache(0), spec, months, ("district",), [None] * 3,
            View(updated_after=after_one),
        )  # fmt: skip
        assert {c.district for c in updated} == {"north", "east"}
        assert {c.release for c in updated} == {2}
        everything = await load_cells(
            pool, settings, StatisticsCache(0), spec, months, ("district",), [None] * 3,
            View(release=1, updated_after=after_one - timedelta(days=1)),
        )  # fmt: skip
        assert {c.district for c in everything} == {"north", "west"}
    finally:
        await pool.close()


@pytest.mark.usefixtures("town")
async def test_release_and_as_of_errors(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    early = await get(client, auth, asOf="2020-01-01T00:00:00Z")
    assert (early.status_code, early.json()["title"]) == (404, "Not released")
    assert (await release(client, auth, months=["2024-01"], metrics=[METRIC])).status_code == 201
    both = await get(client, auth, release="1", asOf="2030-01-01T00:00:00Z")
    assert (both.status_code, both.json()["title"]) == (400, "Release and asOf together")
    early = await get(client, auth, asOf="2020-01-01T00:00:00Z")
    assert (early.status_code, early.headers["content-type"]) == (404, "application/problem+json")
    unknown = await get(client, auth, release="7")
    assert (unknown.status_code, unknown.json()["title"]) == (404, "Unknown release")
    feb = await get(client, auth, release="1", end="2024-02")
    assert (feb.status_code, feb.json()["title"]) == (404, "Not released")
    assert "2024-02" in feb.json()["detail"]
    other = await get(client, auth, release="1", metric="temperature")
    assert (other.status_code, other.json()["title"]) == (404, "Not released")
    naive = await get(client, auth, asOf="2030-01-01T00:00:00")
    assert naive.status_code == 400


@pytest.mark.usefixtures("town")
async def test_publishing_is_refused(
    database_url: str, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    now = datetime.now(UTC)
    current = await release(client, auth, months=[f"{now:%Y-%m}"])
    assert (current.status_code, current.json()["title"]) == (409, "Month not closed")
    bad = await release(client, auth, months=["2024-13"])
    assert (bad.status_code, bad.json()["title"]) == (400, "Bad month")
    unknown = await release(client, auth, months=["2024-01"], metrics=["nope"])
    assert (unknown.status_code, unknown.json()["title"]) == (400, "Unknown metric")
    assert (await release(client, auth, months=[])).status_code == 422
    reader = await create_api_key(database_url, "reader", ["statistics:read"])
    forbidden = await client.post(
        "/v1/statistics/releases",
        json={"months": ["2024-01"], "note": "x"},
        headers={"Authorization": f"Bearer {reader}"},
    )
    assert forbidden.status_code == 403
    assert "statistics:publish" in forbidden.json()["detail"]
    assert (
        await client.post("/v1/statistics/releases", json={"months": ["2024-01"], "note": "x"})
    ).status_code == 401
    assert (await client.get("/v1/statistics/releases", headers=auth)).json()["items"] == []


@pytest.mark.usefixtures("town")
async def test_concurrent_releases_are_numbered_without_gaps(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    posts = [release(client, auth, months=["2024-01"], metrics=[METRIC], note=str(i)) for i in range(3)]
    answers = await asyncio.gather(*posts)
    assert [a.status_code for a in answers] == [201] * 3
    assert sorted(a.json()["release"] for a in answers) == [1, 2, 3]
    # Each saw the one before it: nothing changed in between, so no revisions.
    assert [a.json()["revisions"] for a in answers] == [0, 0, 0]
    listed = await client.get("/v1/statistics/releases", params={"limit": "2"}, headers=auth)
    page = listed.json()
    assert [r["release"] for r in page["items"]] == [1, 2]
    rest = await client.get(
        "/v1/statistics/releases", params={"limit": "2", "cursor": page["next_cursor"]}, headers=auth
    )
    assert [r["release"] for r in rest.json()["items"]] == [3]
    assert rest.json()["next_cursor"] is None


@pytest.mark.usefixtures("town")
async def test_released_rows_are_immutable(
    database_url: str, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    assert (await release(client, auth, months=["2024-01"], metrics=[METRIC])).status_code == 201
    conn = await asyncpg.connect(database_url)
    try:
        for sql in (
            "UPDATE statistics_release_cells SET mean = 1",
            "DELETE FROM statistics_release_cells",
            "TRUNCATE statistics_release_cells CASCADE",
            "UPDATE statistics_releases SET note = 'edited'",
            "DELETE FROM statistics_release_contents",
            "TRUNCATE statistics_releases CASCADE",
        ):
            with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
                await conn.execute(sql)
        assert await conn.fetchval("SELECT count(*) FROM statistics_release_cells") > 0
    finally:
        await conn.close()


@pytest.mark.usefixtures("town")
async def test_reference_metadata(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await register(
        client, auth, "e1", domain="water", district="east", provenance="partner",
        expected_interval_s=86400, registered_at="2023-06-01T00:00:00Z",
    )  # fmt: skip
    made = (await release(client, auth, months=["2024-01"], metrics=[METRIC, "temperature"])).json()
    resp = await client.get("/v1/statistics/releases/1/metadata", headers=auth)
    assert resp.status_code == 200, resp.text
    meta = resp.json()
    assert meta == made["metadata"]
    assert meta == (await client.get("/v1/statistics/releases/1", headers=auth)).json()["metadata"]
    devices = {(d["provenance"], d["domain"]): d["active"] for d in meta["source"]["devices"]}
    assert devices == {("official", "water"): 6, ("citizen", "water"): 1, ("partner", "water"): 1}
    assert meta["methods"]["suppression"]["k"] == 3
    assert "conf_status D" in meta["methods"]["suppression"]["secondary"]
    assert {m["metric"]: m["unit"] for m in meta["methods"]["metrics"]} == {
        METRIC: "m3",
        "temperature": "Cel",
    }
    assert {"from": "degC", "to": "Cel", "scale": 1.0, "offset": 0.0} in meta["methods"]["unit_conversions"]
    assert set(meta["methods"]["rollups"]) >= {"mean", "min", "max", "total_consumption"}
    assert meta["coverage"] == [
        {
            "month": "2024-01",
            "districts_without_reporting_device": ["east"],
            "domains_without_reporting_device": [],
        }
    ]
    (lag,) = meta["timeliness"]
    published = datetime.fromisoformat(made["published_at"])
    assert lag["month"] == "2024-01"
    assert lag["release_lag_days"] == pytest.approx((published - FEB).total_seconds() / 86400, abs=1e-3)
    assert "immutable" in meta["revisions_policy"]
    # Stored with the release: a later registry change does not move it.
    await register(client, auth, "e2", domain="water", district="east", provenance="partner")
    assert (await client.get("/v1/statistics/releases/1/metadata", headers=auth)).json() == meta
    missing = await client.get("/v1/statistics/releases/9/metadata", headers=auth)
    assert (missing.status_code, missing.json()["title"]) == (404, "Unknown release")
