"""Registering the simulated city through the real API (uvicorn on a free port, a fresh store)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import ValidationError

from api.app import serve as serve_api
from api.keys import create_api_key
from api.settings import ApiSettings
from devstack.mosquitto import MosquittoBroker
from devstack.process import free_port
from simulator.generate import Simulation
from simulator.publisher import serve
from simulator.register import (
    CITY_CENTRE,
    ApiUnavailable,
    RegistrationError,
    left_unregistered,
    register_city,
)
from simulator.settings import SimulatorSettings
from tests.simulator.conftest import START, small_city

pytestmark = pytest.mark.integration

REGISTER_SCOPES = ["devices:write", "metrics:read"]


@contextlib.asynccontextmanager
async def running_api(database_url: str, port: int) -> AsyncIterator[str]:
    """The real API on ``port`` until the block ends; yields its base URL once it answers."""
    settings = ApiSettings(
        database_url=database_url, kafka_bootstrap="127.0.0.1:9", kafka_timeout_s=1.0, api_port=port
    )
    task = asyncio.create_task(serve_api(settings))
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
        yield url
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[str]:
    """The base URL of an API on this test's store."""
    async with running_api(database_url, free_port()) as url:
        yield url


async def key_file(database_url: str, path: Path, scopes: list[str]) -> Path:
    """A file holding a new key with ``scopes``."""
    key = await create_api_key(database_url, "simulator", scopes)
    await asyncio.to_thread(path.write_text, key + "\n", encoding="utf-8")
    return path


async def registry(database_url: str) -> dict[str, dict[str, Any]]:
    """The devices table, by id."""
    conn = await asyncpg.connect(database_url)
    try:
        return {r["device_id"]: dict(r) for r in await conn.fetch("SELECT * FROM devices")}
    finally:
        await conn.close()


async def execute(database_url: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def city(url: str, keys: Path, **overrides: Any) -> SimulatorSettings:
    """The small test city, registering with ``url``; a quarter of it left unregistered."""
    values: dict[str, Any] = {"register_url": url, "api_key_file": keys, "unregistered_share": 0.25}
    return small_city(**{**values, **overrides})


async def test_devices_end_registered_with_the_city_model_metadata(
    api: str, database_url: str, tmp_path: Path
) -> None:
    sim = Simulation(city(api, await key_file(database_url, tmp_path / "key", REGISTER_SCOPES)))
    done = await register_city(sim)
    rows = await registry(database_url)
    left = left_unregistered(sim.devices, 0.25, sim.seed)
    assert len(sim.devices) == 24
    assert len(left) == 6
    assert set(done.left_unregistered) == left
    assert set(rows) == set(done.registered) == set(done.created) == {d.device_id for d in sim.devices} - left
    for device in sim.devices:
        if device.device_id in left:
            continue
        row = rows[device.device_id]
        assert (row["domain"], row["district"], row["provenance"]) == (
            device.domain,
            device.district,
            device.provenance.value,
        )
        assert row["status"] == "active"
        assert row["expected_interval_s"] == sim.settings.time_step_s
        # The history the simulator publishes starts at START: completeness counts from there.
        assert row["registered_at"] == START
        assert row["site"].startswith(f"{device.district} ")
        assert abs(row["lat"] - CITY_CENTRE[0]) < 0.1
        assert abs(row["lon"] - CITY_CENTRE[1]) < 0.1
    assert len({r["site"] for r in rows.values()}) == len(rows)
    assert len({(r["lat"], r["lon"]) for r in rows.values()}) == len(rows)
    # The districts' devices sit around centres of their own.
    by_district: dict[str, list[tuple[float, float]]] = {}
    for r in rows.values():
        by_district.setdefault(r["district"], []).append((r["lat"], r["lon"]))
    centres = {
        (sum(p[0] for p in ps) / len(ps), sum(p[1] for p in ps) / len(ps)) for ps in by_district.values()
    }
    assert len(centres) == len(by_district) > 1


def test_the_unregistered_share_is_deterministic_by_seed() -> None:
    sim = Simulation(small_city(devices=200))
    again = Simulation(small_city(devices=200))
    other = Simulation(small_city(devices=200, seed=8))
    chosen = left_unregistered(sim.devices, 0.05, sim.seed)
    assert len(chosen) == 10
    assert chosen == left_unregistered(again.devices, 0.05, again.seed)
    assert chosen != left_unregistered(other.devices, 0.05, other.seed)
    assert chosen <= {d.device_id for d in sim.devices}
    assert left_unregistered(sim.devices, 0.0, sim.seed) == frozenset()
    assert left_unregistered(sim.devices, 1.0, sim.seed) == {d.device_id for d in sim.devices}
    # Rounded half up: 24 devices * 0.0625 = 1.5 -> 2.
    small = Simulation(small_city())
    assert len(left_unregistered(small.devices, 0.0625, small.seed)) == 2


def test_registration_settings_are_checked(tmp_path: Path) -> None:
    settings = small_city(register_url="http://api.example:8000/", api_key="cik_secret")
    assert settings.register_url == "http://api.example:8000"
    assert "cik_secret" not in repr(settings)
    with pytest.raises(ValidationError, match="needs an API key"):
        small_city(register_url="http://api.example:8000")
    with pytest.raises(ValidationError, match="not both"):
        small_city(api_key="cik_secret", api_key_file=tmp_path / "key")
    with pytest.raises(ValidationError, match="base URL"):
        small_city(register_url="api.example:8000", api_key="cik_secret")


async def test_re_registration_is_idempotent_and_keeps_the_earlier_registration(
    api: str, database_url: str, tmp_path: Path
) -> None:
    sim = Simulation(city(api, await key_file(database_url, tmp_path / "key", REGISTER_SCOPES)))
    first = await register_city(sim)
    before = await registry(database_url)
    second = await register_city(sim)
    assert second.unchanged == first.created
    assert (second.created, second.updated) == ((), ())
    assert await registry(database_url) == before  # not even updated_at moved

    # One device as the consumer auto-registered it earlier, one registered after START elsewhere.
    seen, moved = first.created[:2]
    await execute(
        database_url,
        "UPDATE devices SET status = 'unregistered', district = NULL, site = NULL, lat = NULL, lon = NULL,"
        " expected_interval_s = NULL, provenance = 'unknown', registered_at = $2 WHERE device_id = $1",
        seen,
        START - timedelta(days=1),
    )
    await execute(
        database_url,
        "UPDATE devices SET site = 'elsewhere', registered_at = $2 WHERE device_id = $1",
        moved,
        START + timedelta(days=1),
    )
    third = await register_city(sim)
    assert third.updated == (seen, moved)
    after = await registry(database_url)
    assert after[seen]["registered_at"] == START - timedelta(days=1)
    assert after[moved]["registered_at"] == START
    for device_id in (seen, moved):
        assert {k: v for k, v in after[device_id].items() if k not in ("registered_at", "updated_at")} == {
            k: v for k, v in before[device_id].items() if k not in ("registered_at", "updated_at")
        }


async def test_a_wrong_key_exits_with_a_clear_error(api: str, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-key"
    wrong.write_text("cik_0123456789abcdef_" + "x" * 43 + "\n", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "cli", "simulate", "--register-url", api, "--api-key-file", str(wrong)],
        *["--mqtt-port", str(free_port()), "--count", "10"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    text = stderr.decode()
    assert proc.returncode == 1, text
    assert "cityingest simulate: the API at" in text
    assert "rejected the API key (401" in text
    assert "cityingest apikey create" in text
    assert "--api-key-file" in text


async def test_a_key_without_the_scopes_or_bad_metadata_is_a_clear_error(
    api: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = await key_file(database_url, tmp_path / "reader", ["statistics:read"])
    with pytest.raises(RegistrationError, match=r"403.*devices:write and metrics:read"):
        await register_city(Simulation(city(api, reader)))
    with pytest.raises(RegistrationError, match=r"cannot read the API key file .*missing"):
        await register_city(Simulation(city(api, tmp_path / "missing")))

    def off_the_map(*_: object) -> dict[str, Any]:
        return {"domain": "water", "lat": 123.0, "lon": 4.0}

    monkeypatch.setattr("simulator.register.device_metadata", off_the_map)
    keys = await key_file(database_url, tmp_path / "key", REGISTER_SCOPES)
    with pytest.raises(RegistrationError, match=r"refused the metadata of device \S+ \(422: .*lat"):
        await register_city(Simulation(city(api, keys)))
    assert await registry(database_url) == {}


async def test_waits_for_an_api_that_is_starting_and_gives_up_on_an_absent_one(
    database_url: str, tmp_path: Path
) -> None:
    keys = await key_file(database_url, tmp_path / "key", REGISTER_SCOPES)
    port = free_port()
    registering = asyncio.create_task(register_city(Simulation(city(f"http://127.0.0.1:{port}", keys))))
    await asyncio.sleep(1.0)
    assert not registering.done()
    async with running_api(database_url, port):
        done = await registering
    assert len(done.created) == 18

    absent = Simulation(city(f"http://127.0.0.1:{free_port()}", keys))
    with pytest.raises(ApiUnavailable, match=r"did not answer GET /v1/\S+ within 1s .*--register-url"):
        await register_city(absent, retry_within_s=1.0)


async def test_a_registering_run_records_the_registered_devices_in_the_truth(
    api: str, database_url: str, tmp_path: Path, mqtt_broker: MosquittoBroker, mqtt_prefix: str
) -> None:
    settings = city(
        api,
        await key_file(database_url, tmp_path / "key", REGISTER_SCOPES),
        mqtt_host=mqtt_broker.host,
        mqtt_port=mqtt_broker.port,
        mqtt_topic_prefix=mqtt_prefix,
        client_id=f"{mqtt_prefix}-sim",
        truth=tmp_path / "truth.json",
        count=50,
        rate=0,
    )
    await serve(settings)
    truth = json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))
    assert truth["messages"]["total"] == 50
    assert truth["registered"] == sorted(await registry(database_url))
    assert len(truth["registered"]) == 18
    assert set(truth["devices"]) - set(truth["registered"]) == left_unregistered(
        Simulation(settings).devices, 0.25, 7
    )
