"""/sdmx: versioned structures and SDMX REST data, read back by sdmx1 and pysdmx as an NSO would."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.etree import ElementTree

import httpx
import pandas as pd
import pytest
import sdmx
from pysdmx.errors import Invalid
from pysdmx.io import get_datasets, read_sdmx
from pysdmx.io.xml.sdmx21.reader.error import read as read_error
from pysdmx.model import Codelist, Dataflow, Schema

from api.app import create_app
from api.settings import ApiSettings
from tests.api.conftest import apply, envelope, register, started, wait_healthy

pytestmark = pytest.mark.integration

FLOW = "CITYINGEST,CITY_SENSORS_MONTHLY"
STRUCTURE = "application/vnd.sdmx.structure+xml;version=2.1"
_MES = "http://www.sdmx.org/resources/sdmxml/schemas/v2_1/message"
GENERIC = "application/vnd.sdmx.genericdata+xml;version=2.1"
JAN = datetime(2024, 1, 1, tzinfo=UTC)


CITY = (
    ("a1", "North"), ("a2", "North"), ("a3", "North"), ("b1", "old.town"),
    ("s1", "South"), ("s2", "South"), ("s3", "South"), ("s4", "South"),
)  # fmt: skip


async def _city(database_url: str, client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    """Eight temperature sensors in three districts (one with a dot, no SDMX id), a year of daily readings.

    At k = 3, old.town (one sensor) is suppressed, and North (three, fewer than South's four) with it:
    the city total minus South and North would otherwise reveal old.town (secondary suppression).
    """
    for device, district in CITY:
        await register(
            client,
            auth,
            device,
            domain="environment",
            district=district,
            provenance="official",
            expected_interval_s=86400,
            registered_at="2023-12-01T00:00:00Z",
        )
    sent = []
    for n, (device, _) in enumerate(CITY):
        for day in range(366):
            at = JAN + timedelta(days=day, hours=n)
            sent.append(envelope(device, "environment", [("temperature", at, 10.0 + n + (day % 7) / 4, 0)]))
    await apply(database_url, sent)


@pytest.fixture
async def city(database_url: str, client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    """The hand-made city on this test's store."""
    await _city(database_url, client, auth)


def _codes(message: Any, cid: str) -> dict[str, str]:
    lists = [s for s in message.structures if isinstance(s, Codelist) and s.id == cid]
    assert len(lists) == 1
    return {c.id: str(c.name) for c in lists[0].codes}


async def test_sdmx1_reads_structures_and_a_year_by_district_and_pysdmx_validates_it(
    database_url: str, server: str, key: str
) -> None:
    """The acceptance test of issue 15: sdmx1, pysdmx and /v1/statistics/monthly agree."""
    await wait_healthy(server)
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=server, timeout=60) as client:
        await _city(database_url, client, auth)
        structure_xml = (
            await client.get(
                "/sdmx/dataflow/CITYINGEST/CITY_SENSORS_MONTHLY/latest",
                params={"references": "all"},
                headers=auth | {"Accept": STRUCTURE},
            )
        ).text
        data_xml = (
            await client.get(
                f"/sdmx/data/{FLOW}/M.._T._T.temperature.",
                params={"startPeriod": "2024", "endPeriod": "2024"},
                headers=auth | {"Accept": GENERIC},
            )
        ).text
        monthly = (
            await client.get(
                "/v1/statistics/monthly",
                params={"metric": "temperature", "start": "2024-01", "end": "2024-12", "by": "district"},
                headers=auth,
            )
        ).json()["items"]
        totals = (
            await client.get(
                "/v1/statistics/monthly",
                params={"metric": "temperature", "start": "2024-01", "end": "2024-12"},
                headers=auth,
            )
        ).json()["items"]

    def pull() -> tuple[Any, Any, Any]:
        sdmx.add_source(
            {
                "id": "CITYINGEST_TEST",
                "url": f"{server}/sdmx",
                "name": "cityingest under test",
                "supports": {"codelist": True, "datastructure": True, "dataflow": True},
            },
            override=True,
        )
        sdmx1 = sdmx.Client("CITYINGEST_TEST", session=None)
        sdmx1.session.headers.update(auth)
        flows = sdmx1.dataflow("CITY_SENSORS_MONTHLY", agency_id="CITYINGEST")
        dsd_msg = sdmx1.datastructure(
            "DSD_CITY_SENSORS_MONTHLY", agency_id="CITYINGEST", params={"references": "all"}
        )
        data = sdmx1.data(
            "CITY_SENSORS_MONTHLY",
            key="M.._T._T.temperature.",
            params={"startPeriod": "2024", "endPeriod": "2024"},
            headers={"Accept": GENERIC},
        )
        return flows, dsd_msg, data

    flows, dsd_msg, data = await asyncio.to_thread(pull)
    assert "CITY_SENSORS_MONTHLY" in flows.dataflow
    dsd = dsd_msg.structure["DSD_CITY_SENSORS_MONTHLY"]
    assert [d.id for d in dsd.dimensions] == [
        "FREQ", "REF_AREA", "DOMAIN", "PROVENANCE", "INDICATOR", "STATISTIC", "TIME_PERIOD",
    ]  # fmt: skip
    areas = dsd_msg.codelist["CL_REF_AREA"]
    assert {c.id for c in areas} >= {"North", "_T", "_U"}
    assert "old.town" in [str(c.name) for c in areas]
    frame = sdmx.to_pandas(data)
    series = frame.reset_index() if isinstance(frame, pd.Series) else frame
    got = {
        (r["REF_AREA"], r["STATISTIC"], r["TIME_PERIOD"]): float(r["value"])
        for r in series.rename(columns={0: "value"}).to_dict("records")
        if not pd.isna(r["value"])  # suppressed cells: observations without a value
    }
    oldtown = next(c.id for c in areas if str(c.name) == "old.town")
    by_code = {"North": "North", "South": "South", "old.town": oldtown}
    expected = {}
    for cell in monthly:
        for stat, field in (("MEAN", "mean"), ("MIN", "min"), ("MAX", "max")):
            if cell[field] is not None:
                expected[(by_code[cell["district"]], stat, cell["period"])] = cell[field]
    for cell in totals:
        for stat, field in (("MEAN", "mean"), ("MIN", "min"), ("MAX", "max")):
            expected[("_T", stat, cell["period"])] = cell[field]
    assert {k[0] for k in expected} == {"South", "_T"}  # old.town and North are suppressed: no values
    assert len(expected) == 12 * 3 * 2
    assert got == expected

    structure = read_sdmx(structure_xml, validate=True)
    datasets = get_datasets(data_xml, structure_xml, validate=True)
    assert len(datasets) == 1
    frame = datasets[0].data
    schema = datasets[0].structure
    assert isinstance(schema, Schema)
    for comp in schema.components.dimensions:
        if comp.local_codes is not None:
            allowed = {c.id for c in comp.local_codes}
            assert set(frame[comp.id].dropna()) <= allowed, comp.id
    assert set(frame["OBS_STATUS"]) <= set(_codes(structure, "CL_OBS_STATUS"))
    assert (frame["INDICATOR"] == "temperature").all()
    assert len(frame) == 12 * 3 * 4  # North and old.town (suppressed: no value), South and _T


async def _get(client: httpx.AsyncClient, path: str, auth: dict[str, str], **params: Any) -> httpx.Response:
    return await client.get(path, params=params, headers=auth)


@pytest.mark.usefixtures("city")
async def test_versions_bump_and_old_versions_stay_byte_identical(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    first = await _get(client, "/sdmx/codelist/CITYINGEST/CL_REF_AREA/latest", auth)
    assert first.status_code == 200
    assert 'version="1.0.0"' in first.text
    await register(client, auth, "c1", domain="environment", district="East")
    added = await _get(client, "/sdmx/codelist/CITYINGEST/CL_REF_AREA/latest", auth)
    assert 'version="1.1.0"' in added.text
    assert _codes(read_sdmx(added.text), "CL_REF_AREA").keys() >= {"East", "North"}
    again = await _get(client, "/sdmx/codelist/CITYINGEST/CL_REF_AREA/1.0.0", auth)
    assert again.content == first.content
    assert "East" not in _codes(read_sdmx(again.text), "CL_REF_AREA")
    dsd = await _get(client, "/sdmx/datastructure/CITYINGEST/DSD_CITY_SENSORS_MONTHLY/latest", auth)
    assert 'version="1.1.0"' in dsd.text
    # The only device in East moves to North: East leaves the registry, so the codelist loses a code.
    await register(client, auth, "c1", domain="environment", district="North")
    removed = await _get(client, "/sdmx/codelist/CITYINGEST/CL_REF_AREA/latest", auth)
    assert "East" not in _codes(read_sdmx(removed.text), "CL_REF_AREA")
    assert 'version="2.0.0"' in removed.text
    dsd = await _get(client, "/sdmx/datastructure/CITYINGEST/DSD_CITY_SENSORS_MONTHLY/latest", auth)
    assert 'version="2.0.0"' in dsd.text
    still = await _get(client, "/sdmx/codelist/CITYINGEST/CL_REF_AREA/1.1.0", auth)
    assert still.content == added.content
    everything = await _get(client, "/sdmx/codelist/CITYINGEST/CL_REF_AREA/all", auth)
    versions = [c.version for c in read_sdmx(everything.text).structures or () if isinstance(c, Codelist)]
    assert versions == ["1.0.0", "1.1.0", "2.0.0"]


@pytest.mark.usefixtures("city")
async def test_references_and_detail(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    def kinds(text: str) -> list[str]:
        # The XML itself: pysdmx's reader needs a DSD's codelists in the message, which parents omit.
        root = ElementTree.fromstring(text.encode())  # noqa: S314 - our own server's answer
        found = root.find(f"{{{_MES}}}Structures")
        assert found is not None
        return sorted(item.tag.split("}")[1] for group in found for item in group)

    base = "/sdmx/dataflow/CITYINGEST/CITY_SENSORS_MONTHLY"
    assert kinds((await _get(client, base, auth)).text) == ["Dataflow"]
    assert kinds((await _get(client, base, auth, references="children")).text) == [
        "DataStructure",
        "Dataflow",
    ]
    full = kinds((await _get(client, base, auth, references="all")).text)
    assert full.count("Codelist") == 8
    assert "ConceptScheme" in full
    assert kinds((await _get(client, base, auth, references="codelist")).text).count("Codelist") == 8
    parents = kinds(
        (await _get(client, "/sdmx/codelist/CITYINGEST/CL_FREQ", auth, references="parents")).text
    )
    assert parents == ["Codelist", "DataStructure"]
    stubs = await _get(client, base, auth, references="all", detail="referencestubs")
    codelists = [s for s in read_sdmx(stubs.text).structures or () if isinstance(s, Codelist)]
    assert codelists
    assert all(len(c.codes) == 0 for c in codelists)
    assert 'isExternalReference="true"' in stubs.text
    missing = await _get(client, "/sdmx/codelist/CITYINGEST/CL_NOPE", auth)
    assert missing.status_code == 404
    with pytest.raises(Invalid, match="100"):
        read_error(missing.text)
    refused = await client.get(base, headers=auth | {"Accept": "application/json"})
    assert refused.status_code == 406


@pytest.mark.usefixtures("city")
async def test_key_syntax(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    async def rows(key: str, **params: Any) -> pd.DataFrame:
        resp = await _get(client, f"/sdmx/data/{FLOW}/{key}", auth, format="csv", **params)
        assert resp.status_code == 200, resp.text
        return pd.read_csv(io.StringIO(resp.text), keep_default_na=False)

    one = await rows("M.North._T._T.temperature.MEAN", startPeriod="2024-01", endPeriod="2024-Q1")
    assert list(one["TIME_PERIOD"]) == ["2024-01", "2024-02", "2024-03"]
    assert set(one["REF_AREA"]) == {"North"}
    both = await rows("M.North+_T._T._T.temperature.MEAN+MAX", startPeriod="2024-02", endPeriod="2024-02")
    assert sorted(zip(both["REF_AREA"], both["STATISTIC"], strict=True)) == [
        ("North", "MAX"),
        ("North", "MEAN"),
        ("_T", "MAX"),
        ("_T", "MEAN"),
    ]
    wide = await rows("M...official.temperature.MEAN", startPeriod="2024-02", endPeriod="2024-02")
    assert {"North", "_T"} <= set(wide["REF_AREA"])
    assert set(wide["PROVENANCE"]) == {"official"}
    last = await rows(
        "M.North._T._T.temperature.MEAN", startPeriod="2024", endPeriod="2024", lastNObservations=2
    )
    assert list(last["TIME_PERIOD"]) == ["2024-11", "2024-12"]
    for bad in ("M.North", "M.Nowhere._T._T.temperature.MEAN", "X....."):
        resp = await _get(client, f"/sdmx/data/{FLOW}/{bad}", auth)
        assert resp.status_code == 400, bad
        assert resp.headers["content-type"] == "application/problem+json"
    bad_period = await _get(client, f"/sdmx/data/{FLOW}/all", auth, startPeriod="2024-13")
    assert bad_period.status_code == 400
    none = await _get(
        client,
        f"/sdmx/data/{FLOW}/M.North._T._T.temperature.MEAN",
        auth,
        startPeriod="2020",
        endPeriod="2020",
    )
    assert none.status_code == 404
    with pytest.raises(Invalid, match="100"):
        read_error(none.text)
    unknown_flow = await _get(client, "/sdmx/data/NOPE/all", auth)
    assert unknown_flow.status_code == 404


@pytest.mark.usefixtures("city")
async def test_each_format_parses_back(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    structure = (
        await _get(client, "/sdmx/dataflow/CITYINGEST/CITY_SENSORS_MONTHLY", auth, references="all")
    ).text
    path = f"/sdmx/data/{FLOW}/M.South+_T._T._T.temperature.MEAN"
    params = {"startPeriod": "2024-01", "endPeriod": "2024-06"}
    seen = []
    for accept in (
        "application/vnd.sdmx.genericdata+xml;version=2.1",
        "application/vnd.sdmx.structurespecificdata+xml;version=2.1",
        "application/vnd.sdmx.generictimeseriesdata+xml;version=2.1",
        "application/vnd.sdmx.structurespecifictimeseriesdata+xml;version=2.1",
        "application/vnd.sdmx.data+csv;version=1.0.0",
        "application/vnd.sdmx.data+csv;version=2.0.0",
        "text/html;q=0.9, application/vnd.sdmx.data+csv;version=1.0.0;q=0.5",
    ):
        resp = await client.get(path, params=params, headers=auth | {"Accept": accept})
        assert resp.status_code == 200, (accept, resp.text)
        frame = get_datasets(resp.text, structure, validate=True)[0].data
        seen.append(
            sorted(
                zip(frame["REF_AREA"], frame["TIME_PERIOD"], frame["OBS_VALUE"].astype(float), strict=True)
            )
        )
    assert all(s == seen[0] for s in seen)
    assert len(seen[0]) == 12
    everything = await client.get(
        path, params=params | {"dimensionAtObservation": "AllDimensions"}, headers=auth | {"Accept": GENERIC}
    )
    assert get_datasets(everything.text, structure)[0].data.shape[0] == 12
    for accept in ("application/vnd.sdmx.data+json;version=1.0.0", "application/json"):
        resp = await client.get(path, params=params, headers=auth | {"Accept": accept})
        assert resp.status_code == 406
    assert (await _get(client, path, auth, format="jsondata")).status_code == 406


async def test_auth_public_mode_and_too_broad(
    database_url: str, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    path = "/sdmx/dataflow/CITYINGEST/CITY_SENSORS_MONTHLY"
    assert (await client.get(path)).status_code == 401
    from api.keys import create_api_key

    metrics_only = await create_api_key(database_url, "m", ["metrics:read"])
    assert (await client.get(path, headers={"Authorization": f"Bearer {metrics_only}"})).status_code == 403
    public = ApiSettings(database_url=database_url, sdmx_public=True, sdmx_max_observations=10)
    async for open_client in started(create_app(public)):
        assert (await open_client.get(path)).status_code == 200
        assert (await open_client.get("/v1/statistics/monthly")).status_code == 401
        # The OpenAPI document says so: no key for /sdmx, the scope everywhere else.
        paths = (await open_client.get("/openapi.json")).json()["paths"]
        sdmx_ops = [op for p, ops in paths.items() if p.startswith("/sdmx/") for op in ops.values()]
        assert sdmx_ops
        assert all(op["security"] == [] for op in sdmx_ops)
        monthly = paths["/v1/statistics/monthly"]["get"]["security"]
        assert monthly == [{"apiKey": ["statistics:read"]}]
        await _city(database_url, open_client, auth)
        broad = await open_client.get(f"/sdmx/data/{FLOW}/all", params={"startPeriod": "2024"})
        assert broad.status_code == 413
        assert broad.json()["sdmx_error_code"] == 130
    closed = (await client.get("/openapi.json")).json()["paths"]
    assert closed["/sdmx/data/{flow_ref}/{key}"]["get"]["security"] == [{"apiKey": ["statistics:read"]}]


@pytest.mark.usefixtures("city")
async def test_dataflow_carries_the_reference_metadata_as_annotations(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """NQAF headings that hold for every release are annotations of the dataflow, as pysdmx reads them."""
    text = (await _get(client, "/sdmx/dataflow/CITYINGEST/CITY_SENSORS_MONTHLY/latest", auth)).text
    flows = [s for s in read_sdmx(text).structures or () if isinstance(s, Dataflow)]
    assert len(flows) == 1
    notes = {a.id: a for a in flows[0].annotations}
    assert set(notes) == {
        "NQAF_METHODS",
        "NQAF_COMPLETENESS",
        "NQAF_CONFIDENTIALITY",
        "NQAF_REVISIONS",
        "NQAF_RELEASE_METADATA",
    }
    assert all(a.type == "NQAF" and a.text for a in notes.values())
    assert "fewer than k reporting devices" in str(notes["NQAF_CONFIDENTIALITY"].text)
    assert "/v1/statistics/releases" in str(notes["NQAF_RELEASE_METADATA"].text)
