"""What an attacker sends at the API's edges: huge bodies, no key, forged cursors, absurd months."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from api.keys import create_api_key
from api.settings import ApiSettings
from tests.api.conftest import register, started, wait_healthy

pytestmark = pytest.mark.integration

CHUNK = 64 * 1024
HUGE = 200 * 1024 * 1024
LIMIT = 256 * 1024


class Body:
    """A 200 MB request body produced lazily, counting how much of it the server asked for."""

    def __init__(self) -> None:
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < HUGE:
            self.sent += CHUNK
            yield b"{" + b" " * (CHUNK - 1)


def assert_problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = resp.json()
    return body


async def test_a_declared_huge_body_is_413_unread(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    body = Body()
    headers = {**auth, "Content-Length": str(HUGE), "Content-Type": "application/json"}
    resp = await client.put("/v1/devices/d1", content=body, headers=headers)
    problem = assert_problem(resp, 413)
    assert "CITYINGEST_MAX_BODY_BYTES" in problem["detail"]
    assert body.sent == 0


async def test_a_chunked_huge_body_is_cut_at_the_limit(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    body = Body()
    resp = await client.put(
        "/v1/devices/d1", content=body, headers={**auth, "Content-Type": "application/json"}
    )
    assert "content-length" not in resp.request.headers
    assert_problem(resp, 413)
    assert body.sent <= LIMIT + CHUNK


@pytest.mark.parametrize("chunked", [True, False])
async def test_the_key_is_checked_before_the_body_is_read(
    client: httpx.AsyncClient, database_url: str, chunked: bool
) -> None:
    size = {} if chunked else {"Content-Length": str(LIMIT)}
    body = Body()
    resp = await client.put("/v1/devices/d1", content=body, headers=size)
    assert_problem(resp, 401)
    assert resp.headers["www-authenticate"].startswith("Bearer")
    reader = await create_api_key(database_url, "reader", ["metrics:read"])
    resp = await client.put(
        "/v1/devices/d1", content=body, headers={**size, "Authorization": f"Bearer {reader}"}
    )
    assert "devices:write" in assert_problem(resp, 403)["detail"]
    assert body.sent == 0


async def test_the_limit_is_a_setting(database_url: str, auth: dict[str, str]) -> None:
    app = create_app(ApiSettings(database_url=database_url, max_body_bytes=20))
    async for client in started(app):
        big = b'{"domain":"water","site":"over twenty"}'
        headers = {**auth, "Content-Type": "application/json"}
        assert_problem(await client.put("/v1/devices/d1", content=big, headers=headers), 413)
        small = await client.put("/v1/devices/d1", content=b'{"domain":"water"}', headers=headers)
        assert small.status_code == 201, small.text


def nested(depth: int = 1400) -> str:
    return base64.urlsafe_b64encode(b"[" * depth).decode()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/devices",
        "/v1/aggregates?metric=temperature&start=2024-01-01T00:00:00Z&end=2024-01-02T00:00:00Z",
        "/v1/statistics/monthly?metric=temperature&start=2024-01&end=2024-01",
        "/v1/coverage?month=2024-01",
        "/v1/series?device_id=d1&metric=temperature&start=2024-01-01T00:00:00Z&end=2024-01-02T00:00:00Z",
    ],
)
@pytest.mark.parametrize(
    "cursor",
    [
        nested(),
        base64.urlsafe_b64encode(b'{"r":"aggregates","k":["0001-01-01T00:00:00+14:00","","",""]}').decode(),
        base64.urlsafe_b64encode(b'{"r":"devices","k":["d0"]}').decode(),  # the old, unsigned shape
        "eyJrIjpbXX0.AAAAAAAAAAAAAAAAAAAAAA",
    ],
)
async def test_forged_cursors_are_400(
    client: httpx.AsyncClient, auth: dict[str, str], path: str, cursor: str
) -> None:
    await register(client, auth, "d1", domain="building")
    url = f"{path}{'&' if '?' in path else '?'}cursor={quote(cursor)}"
    resp = await client.get(url, headers=auth)
    problem = assert_problem(resp, 400)
    assert (problem["title"], problem["parameter"]) == ("Invalid cursor", "cursor")


async def test_cursors_hold_across_replicas_and_restarts(
    database_url: str, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for i in range(3):
        await register(client, auth, f"d{i}", domain="water")
    first = (await client.get("/v1/devices", params={"limit": 1}, headers=auth)).json()
    assert first["next_cursor"]
    # Another API process on the same store, without a configured secret: same key (from the store).
    async for other in started(create_app(ApiSettings(database_url=database_url))):
        page = await other.get(
            "/v1/devices", params={"limit": 1, "cursor": first["next_cursor"]}, headers=auth
        )
        assert page.status_code == 200, page.text
        assert [d["device_id"] for d in page.json()["items"]] == ["d1"]
    # Replicas configured with one secret agree with each other, and refuse the store key's cursors.
    configured = ApiSettings(database_url=database_url, cursor_secret=SecretStr("shared-by-replicas"))
    async for a in started(create_app(configured)):
        cursor = (await a.get("/v1/devices", params={"limit": 1}, headers=auth)).json()["next_cursor"]
        refused = await a.get(
            "/v1/devices", params={"limit": 1, "cursor": first["next_cursor"]}, headers=auth
        )
        assert_problem(refused, 400)
    async for b in started(create_app(configured)):
        page = await b.get("/v1/devices", params={"limit": 1, "cursor": cursor}, headers=auth)
        assert [d["device_id"] for d in page.json()["items"]] == ["d1"]


@pytest.mark.parametrize("month", ["9999-12", "3000-01", "1969-12"])
async def test_months_out_of_range_are_400(
    client: httpx.AsyncClient, auth: dict[str, str], month: str
) -> None:
    resp = await client.get("/v1/coverage", params={"month": month}, headers=auth)
    assert assert_problem(resp, 400)["title"] == "Bad month"
    resp = await client.get(
        "/v1/statistics/monthly", params={"metric": "temperature", "start": month, "end": month}, headers=auth
    )
    assert_problem(resp, 400)


async def test_a_device_of_an_unknown_domain_is_422(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    resp = await client.put("/v1/devices/x", json={"domain": "space"}, headers=auth)
    problem = assert_problem(resp, 422)
    assert (problem["title"], problem["parameter"]) == ("Unknown domain", "domain")
    assert "water" in problem["detail"]
    assert (await client.get("/v1/devices/x", headers=auth)).status_code == 404


@pytest.mark.slow
@pytest.mark.parametrize(
    ("with_key", "size", "status"), [(False, LIMIT, b"401"), (False, HUGE, b"413"), (True, HUGE, b"413")]
)
async def test_a_real_server_answers_before_the_body_is_sent(
    server: str, key: str, with_key: bool, size: int, status: bytes
) -> None:
    """``cityingest api`` under uvicorn answers a PUT from its headers alone: no byte of the body is sent."""
    await wait_healthy(server)
    host, _, port = server.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        authorization = f"Authorization: Bearer {key}\r\n" if with_key else ""
        head = (
            f"PUT /v1/devices/d1 HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"{authorization}Content-Length: {size}\r\n\r\n"
        )
        writer.write(head.encode())
        await writer.drain()
        # Only a safety net: a server waiting for the body would never answer.
        line = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
        await writer.wait_closed()
    assert line.split(b" ")[1] == status, line
