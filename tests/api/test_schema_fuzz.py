"""Schemathesis against the OpenAPI schema of a running ``cityingest api``: no request earns a 5xx."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from devstack.process import free_port
from tests.api.test_metrics_endpoints import fill, make_readings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = 25


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    """``cityingest api`` on this test's store; Kafka at a closed port (lag answers without it)."""
    port = free_port()
    env = dict(
        os.environ,
        CITYINGEST_DATABASE_URL=database_url,
        CITYINGEST_API_PORT=str(port),
        CITYINGEST_KAFKA_BOOTSTRAP="127.0.0.1:9",
        CITYINGEST_KAFKA_TIMEOUT_S="0.5",
        CITYINGEST_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen([sys.executable, "-m", "cli", "api"], env=env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(20)


def fuzz(base: str, key: str) -> list[str]:
    """Run every operation's generated cases; the 5xx answers found."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # Err raises: the schema is invalid

        @given(case=operation.as_strategy(), auth=st.sampled_from([True, True, True, False]))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case, auth: bool) -> None:  # type: ignore[type-arg]
            headers = {"Authorization": f"Bearer {key}"} if auth else {}
            response = case.call(base_url=base, headers=headers, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.query} -> {response.text[:300]}")
            elif response.status_code >= 400:
                ctype = response.headers.get("content-type") or [""]
                assert next(iter(ctype)) == "application/problem+json", response.text

        check()
    return failures


async def test_no_5xx(server: str, database_url: str, key: str) -> None:
    await fill(database_url, make_readings())
    async with httpx.AsyncClient(base_url=server) as client:
        for _ in range(200):
            try:
                await client.get("/healthz")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    failures = await asyncio.to_thread(fuzz, server, key)
    assert not failures, "\n".join(failures[:10])
