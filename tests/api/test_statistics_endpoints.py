"""Monthly statistics and coverage on a hand-made city: suppression, completeness, JSON, CSV, SDMX-CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pysdmx.io.csv.sdmx10.reader import read as read_sdmx

from api.app import create_app
from api.settings import ApiSettings
from core.catalogue import load_catalogue
from tests.api.conftest import apply, envelope, register, started
from tests.api.truth import increases

pytestmark = pytest.mark.integration

JAN = datetime(2024, 1, 1, tzinfo=UTC)
METRIC = "water_volume_m3"


def volumes(
    device: str, start: datetime, step: timedelta, n: int
) -> list[tuple[str, str, datetime, float, int]]:
    """A meter register rising by 0.5 + (i % 3) per reading."""
    out = []
    value = 10.0
    for i in range(n):
        value += 0.5 + i % 3
        out.append((device, METRIC, start + i * step, value, 1 if i == 0 else 0))
    return out


@pytest.fixture
async def city(database_url: str, client: httpx.AsyncClient, auth: dict[str, str]) -> list[Any]:
    """north: 3 hourly devices reporting every 6 h; south: s1 (from Jan 16) + s2 (no interval);
    east: e1 registered, daily, silent; u1: never registered (no district)."""
    registered = "2023-12-01T00:00:00Z"
    for d in ("n1", "n2", "n3"):
        await register(
            client,
            auth,
            d,
            domain="water",
            district="north",
            provenance="official",
            expected_interval_s=3600,
            registered_at=registered,
        )
    await register(
        client,
        auth,
        "s1",
        domain="water",
        district="south",
        provenance="partner",
        expected_interval_s=3600,
        registered_at="2024-01-16T00:00:00Z",
    )
    await register(client, auth, "s2", domain="water", district="south", provenance="citizen")
    await register(
        client,
        auth,
        "e1",
        domain="water",
        district="east",
        expected_interval_s=86400,
        registered_at="2023-01-01T00:00:00Z",
    )
    sent = []
    for d in ("n1", "n2", "n3"):
        sent += volumes(d, JAN, timedelta(hours=6), 124)
    sent += volumes("s1", datetime(2024, 1, 20, tzinfo=UTC), timedelta(hours=1), 10)
    sent += volumes("s2", datetime(2024, 1, 5, tzinfo=UTC), timedelta(days=1), 5)
    sent += volumes("u1", datetime(2024, 1, 7, tzinfo=UTC), timedelta(days=1), 3)
    await apply(database_url, [envelope(d, "water", [(m, t, v, f)]) for d, m, t, v, f in sent])
    return sent


async def monthly(client: httpx.AsyncClient, auth: dict[str, str], **params: str) -> httpx.Response:
    query = {"metric": METRIC, "start": "2024-01", "end": "2024-02", **params}
    return await client.get("/v1/statistics/monthly", params=query, headers=auth)


async def test_cells_by_district(client: httpx.AsyncClient, auth: dict[str, str], city: list[Any]) -> None:
    resp = await monthly(client, auth, by="district")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    cells = {(c["period"], c["district"]): c for c in body["items"]}
    assert set(cells) == {
        (p, d) for p in ("2024-01", "2024-02") for d in ("north", "south", "east", None)
    } - {
        ("2024-02", None),
        ("2024-02", "south"),  # nobody reported nor was expected: no cell
    } | {("2024-02", "south")}
    inc = increases(city)
    north = cells[("2024-01", "north")]
    north_values = [v for d, _, _, v, _ in city if d in ("n1", "n2", "n3")]
    assert (north["devices_reporting"], north["readings"], north["flagged"]) == (3, 372, 3)
    # January was never released: its figures are provisional.
    assert (north["obs_status"], north["conf_status"], north["release"]) == ("P", "F", None)
    assert not north["suppressed"]
    # m3: three decimals (api.decimals)
    assert north["mean"] == round(sum(north_values) / 372, 3)
    assert (north["min"], north["max"]) == (min(north_values), max(north_values))
    assert north["total_consumption"] == round(sum(v for k, v in inc.items() if k[0][0] == "n"), 3)
    assert (north["devices_expected"], north["readings_expected"], north["readings_received"]) == (
        3,
        3 * 744,
        372,
    )
    assert north["completeness"] == pytest.approx(1 / 6)
    # Two devices: suppressed, values and the counts of readings gone, device counts kept.
    south = cells[("2024-01", "south")]
    assert (south["obs_status"], south["suppressed"], south["devices_reporting"]) == ("Q", True, 2)
    assert south["conf_status"] == "C"
    assert (south["mean"], south["min"], south["max"], south["total_consumption"]) == (None,) * 4
    assert (south["readings"], south["flagged"], south["readings_received"], south["completeness"]) == (
        None,
    ) * 4
    assert (south["devices_expected"], south["readings_expected"]) == (1, 16 * 24)
    assert south["devices_without_interval"] == 1
    east = cells[("2024-01", "east")]
    assert (east["obs_status"], east["readings_expected"], east["completeness"]) == ("O", 31, 0.0)
    assert cells[("2024-01", None)]["devices_reporting"] == 1  # u1: counted, never expected
    feb = cells[("2024-02", "north")]
    assert (feb["obs_status"], feb["readings_expected"], feb["completeness"]) == ("O", 3 * 29 * 24, 0.0)
    assert body["suppression_k"] == 3
    assert "completeness" in body["completeness_rule"]


@pytest.mark.usefixtures("city")
async def test_k_is_configurable(database_url: str, auth: dict[str, str]) -> None:
    app = create_app(ApiSettings(database_url=database_url, suppression_k=1))
    async for client in started(app):
        body = (await monthly(client, auth, by="district", end="2024-01")).json()
    south = next(c for c in body["items"] if c["district"] == "south")
    assert south["obs_status"] == "P"
    assert south["total_consumption"] is not None
    app = create_app(ApiSettings(database_url=database_url, suppression_k=2))
    async for client in started(app):
        body = (await monthly(client, auth, by="district", end="2024-01")).json()
    status = {c["district"]: (c["obs_status"], c["conf_status"]) for c in body["items"]}
    # u1 alone (no district) is suppressed; south, the smallest published district, protects it.
    assert status == {"north": ("P", "F"), "south": ("Q", "D"), "east": ("O", "F"), None: ("Q", "C")}


@pytest.mark.usefixtures("city")
async def test_csv_parses_back(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    resp = await monthly(client, auth, by="district,provenance", format="csv")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    north = [r for r in rows if r["district"] == "north" and r["period"] == "2024-01"]
    assert len(north) == 1
    assert north[0]["provenance"] == "official"
    assert north[0]["domain"] == "_T"
    assert int(north[0]["readings"]) == 372
    assert north[0]["obs_status"] == "P"
    south = [r for r in rows if r["district"] == "south" and r["period"] == "2024-01"]
    assert {r["provenance"] for r in south} == {"partner", "citizen"}
    assert all(r["obs_status"] == "Q" and r["mean"] == "" and r["total_consumption"] == "" for r in south)


async def test_sdmx_csv_parses_back(client: httpx.AsyncClient, auth: dict[str, str], city: list[Any]) -> None:
    resp = await monthly(client, auth, by="district", format="sdmx-csv")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/vnd.sdmx.data+csv")
    datasets = read_sdmx(resp.text)
    assert len(datasets) == 1
    # The current stored dataflow version (/sdmx), no longer a fixed 1.0.
    assert datasets[0].short_urn == "Dataflow=CITYINGEST:CITY_SENSORS_MONTHLY(1.0.0)"
    assert len(datasets[0].data) == 7
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert list(rows[0])[:8] == [
        "DATAFLOW",
        "FREQ",
        "REF_AREA",
        "DOMAIN",
        "PROVENANCE",
        "INDICATOR",
        "STATISTIC",
        "TIME_PERIOD",
    ]
    by_area = {(r["REF_AREA"], r["TIME_PERIOD"]): r for r in rows}
    north = by_area[("north", "2024-01")]
    inc = increases(city)
    assert (north["FREQ"], north["DOMAIN"], north["PROVENANCE"], north["STATISTIC"]) == (
        "M",
        "_T",
        "_T",
        "TOTAL",
    )
    assert float(north["OBS_VALUE"]) == pytest.approx(sum(v for k, v in inc.items() if k[0][0] == "n"))
    assert (north["UNIT_MEASURE"], north["OBS_STATUS"], north["NB_DEVICES"]) == ("m3", "P", "3")
    south = by_area[("south", "2024-01")]
    assert (south["OBS_VALUE"], south["OBS_STATUS"]) == ("", "Q")
    assert by_area[("_U", "2024-01")]["OBS_STATUS"] == "Q"  # u1 has no district


@pytest.mark.parametrize(
    ("params", "status", "title"),
    [
        ({"metric": "nope"}, 400, "Unknown metric"),
        ({"start": "2024-03"}, 400, "Bad month range"),
        ({"start": "2024-1"}, 422, "Invalid request"),
        ({"start": "2024-13"}, 400, "Bad month range"),
        ({"start": "2000-01"}, 400, "Bad month range"),
        ({"by": "street"}, 400, "Unknown breakdown"),
        ({"format": "xlsx"}, 422, "Invalid request"),
    ],
)
async def test_statistics_errors(
    client: httpx.AsyncClient, auth: dict[str, str], params: dict[str, str], status: int, title: str
) -> None:
    resp = await monthly(client, auth, **params)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["title"] == title


@pytest.mark.usefixtures("city")
async def test_json_pages(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    whole = (await monthly(client, auth, by="district")).json()["items"]
    paged: list[Any] = []
    cursor = None
    while True:
        body = await monthly(client, auth, by="district", limit="2", **({"cursor": cursor} if cursor else {}))
        page = body.json()
        paged += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == whole


@pytest.mark.usefixtures("city")
async def test_coverage(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    resp = await client.get("/v1/coverage", params={"month": "2024-01", "domain": "water"}, headers=auth)
    assert resp.status_code == 200, resp.text
    rows = {r["district"]: r for r in resp.json()["items"]}
    assert list(rows) == ["east", "north", "south", None]
    north, south, east, nowhere = rows["north"], rows["south"], rows["east"], rows[None]
    assert (north["devices_registered"], north["devices_reporting"], north["devices_silent"]) == (3, 3, 0)
    assert (north["readings_expected"], north["readings_received"]) == (3 * 744, 372)
    assert north["metrics_reported"] == [METRIC]
    water = {name for name, spec in load_catalogue().items() if "water" in spec.domains}
    assert north["metrics_without_data"] == sorted(water - {METRIC})
    # s2 was registered today, after January 2024: in January it is a reporting, unregistered device.
    assert (
        south["devices_registered"],
        south["devices_reporting"],
        south["devices_unregistered_reporting"],
    ) == (1, 1, 1)
    # One registered device reports in south: its readings count is hidden, as in the statistics cell
    # (which has the same readings_received, 10, and hides it).
    assert (south["readings_expected"], south["readings_received"], south["completeness"]) == (
        16 * 24,
        None,
        None,
    )
    stats = (await monthly(client, auth, by="district", end="2024-01")).json()["items"]
    assert next(c for c in stats if c["district"] == "south")["readings_received"] is None
    assert (east["devices_registered"], east["devices_reporting"], east["devices_silent"]) == (1, 0, 1)
    assert (east["completeness"], east["metrics_reported"]) == (0.0, [])
    assert (nowhere["devices_registered"], nowhere["devices_unregistered_reporting"]) == (0, 1)
    bad = await client.get("/v1/coverage", params={"month": "2024-13"}, headers=auth)
    assert bad.status_code == 400
    assert bad.json()["title"] == "Bad month"


WEST = {
    # provenance official: 9 readings, mean 188 / 9 = 20.8889 (with float noise in o3's values)
    "o1": ("official", [20.0, 21.0, 22.0]),
    "o2": ("official", [20.0, 21.0, 21.0]),
    "o3": ("official", [20.123456789, 21.876543211, 21.0]),
    # provenance citizen, one device: suppressed; its mean is 23.0
    "c1": ("citizen", [22.0, 23.0, 24.0]),
}


@pytest.fixture
async def west(database_url: str, client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    """The issue's shape: a district of 12 readings, 9 of them from a published partner cell."""
    sent = []
    for device, (provenance, values) in WEST.items():
        await register(
            client, auth, device, domain="environment", district="west", provenance=provenance,
            expected_interval_s=86400, registered_at="2023-12-01T00:00:00Z",
        )  # fmt: skip
        times = [JAN + timedelta(days=i + 1) for i in range(len(values))]
        sent += [
            envelope(device, "environment", [("temperature", t, v, 0)])
            for t, v in zip(times, values, strict=True)
        ]
    await apply(database_url, sent)


@pytest.mark.usefixtures("west")
async def test_a_suppressed_cell_cannot_be_rebuilt_from_its_counts(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """(12 x 21.41667 - 9 x 20.8889) / 3 = 23.0 needed the suppressed cell's readings count, and the
    official cell's mean and count: secondary suppression hides those too (conf_status D)."""
    params = {"metric": "temperature", "end": "2024-01"}
    total = (await monthly(client, auth, by="district", **params)).json()["items"]
    assert [(c["district"], c["obs_status"], c["readings"]) for c in total] == [("west", "P", 12)]
    cells = (await monthly(client, auth, by="district,provenance", **params)).json()["items"]
    by_provenance = {c["provenance"]: c for c in cells}
    official, citizen = by_provenance["official"], by_provenance["citizen"]
    assert (citizen["obs_status"], citizen["suppressed"], citizen["devices_reporting"]) == ("Q", True, 1)
    assert (citizen["conf_status"], official["conf_status"]) == ("C", "D")
    assert (official["obs_status"], official["suppressed"], official["devices_reporting"]) == ("Q", True, 3)
    hidden = ("mean", "min", "max", "readings", "flagged", "readings_received", "completeness")
    assert {name: citizen[name] for name in hidden} == dict.fromkeys(hidden)
    assert {name: official[name] for name in hidden} == dict.fromkeys(hidden)

    csv_rows = list(
        csv.DictReader(
            io.StringIO((await monthly(client, auth, by="district,provenance", format="csv", **params)).text)
        )
    )
    (row,) = [r for r in csv_rows if r["provenance"] == "citizen"]
    assert row["obs_status"] == "Q"
    assert all(row[name] == "" for name in hidden)

    sdmx = await monthly(client, auth, by="district,provenance", format="sdmx-csv", **params)
    sdmx_rows = [r for r in csv.DictReader(io.StringIO(sdmx.text)) if r["PROVENANCE"] == "citizen"]
    assert {r["STATISTIC"] for r in sdmx_rows} == {"MEAN", "MIN", "MAX"}
    assert all((r["OBS_STATUS"], r["OBS_VALUE"], r["COMPLETENESS"]) == ("Q", "", "") for r in sdmx_rows)
    assert not {"readings", "READINGS", "NB_READINGS"} & set(sdmx_rows[0])


@pytest.mark.usefixtures("west")
async def test_statistics_are_rounded_per_unit_and_raw_series_are_not(
    database_url: str, auth: dict[str, str]
) -> None:
    # k = 1: nothing suppressed, so the official cell publishes its values.
    async for client in started(create_app(ApiSettings(database_url=database_url, suppression_k=1))):
        await _rounded(client, auth)


async def _rounded(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    params = {"metric": "temperature", "end": "2024-01", "by": "provenance"}
    body = (await monthly(client, auth, **params)).json()
    assert (body["unit"], body["decimals"]) == ("Cel", 2)
    official = next(c for c in body["items"] if c["provenance"] == "official")
    assert (official["mean"], official["min"], official["max"]) == (20.89, 20.0, 22.0)
    csv_rows = list(csv.DictReader(io.StringIO((await monthly(client, auth, format="csv", **params)).text)))
    assert next(r for r in csv_rows if r["provenance"] == "official")["mean"] == "20.89"
    sdmx = (await monthly(client, auth, format="sdmx-csv", **params)).text
    rows = [r for r in csv.DictReader(io.StringIO(sdmx)) if r["PROVENANCE"] == "official"]
    assert {(r["STATISTIC"], r["OBS_VALUE"], r["DECIMALS"]) for r in rows} == {
        ("MEAN", "20.89", "2"),
        ("MIN", "20.0", "2"),
        ("MAX", "22.0", "2"),
    }
    assert len(read_sdmx(sdmx)) == 1
    raw = await client.get(
        "/v1/series",
        params={"device_id": "o3", "metric": "temperature", "bucket": "raw",
                "start": "2024-01-01T00:00:00Z", "end": "2024-01-05T00:00:00Z"},
        headers=auth,
    )  # fmt: skip
    assert [p["mean"] for p in raw.json()["items"]] == WEST["o3"][1]
