"""Session-wide real services for the tests: PostgreSQL+TimescaleDB, Mosquitto and Tansu.

Each starts once per test session on a free port in a temporary directory and stops at the end. A
missing binary fails the run with the command that installs it; nothing is skipped silently.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.kafka import ensure_topics
from devstack.mosquitto import MosquittoBroker
from devstack.postgres import PostgresCluster
from devstack.process import free_port
from devstack.tansu import TansuBroker
from migrations import apply_migrations

TEMPLATE_DB = "cityingest_template"
LOOP_GUARD = "loop_exception_guard"
_db_counter = itertools.count(1)

# Tests may crash PostgreSQL (SIGKILL) but never the machine, so fsync buys nothing here but time;
# the dev stack and production keep it on.
TEST_PG_SETTINGS = {
    "shared_buffers": "'256MB'",
    "fsync": "off",
    "timescaledb.max_background_workers": "0",
    "max_connections": "300",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every coroutine test fails on what its event loop swallowed (asyncpg's test base does the same)."""
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and inspect.iscoroutinefunction(function):
            fixturenames: list[str] = getattr(item, "fixturenames", [])
            if LOOP_GUARD not in fixturenames:
                fixturenames.insert(0, LOOP_GUARD)


@pytest.fixture
async def loop_exception_guard() -> AsyncIterator[None]:
    """Fail the test if anything reached the loop's exception handler while it ran: a task that died
    with nobody awaiting it, a callback that raised, an exception never retrieved from a future."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield
        gc.collect()  # "exception was never retrieved" is reported when the task is collected
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    if seen:
        described = [
            f"{c.get('message')}: {c.get('exception')!r} "
            f"({c.get('task') or c.get('future') or c.get('handle')})"
            for c in seen
        ]
        pytest.fail("the event loop swallowed:\n" + "\n".join(described), pytrace=False)


@dataclass(frozen=True)
class KafkaTopics:
    """Unique topic names created for one test, so tests never see each other's records."""

    readings: str
    dlq: str


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary directory for the services' data and logs."""
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def pg_cluster(service_dir: Path) -> Iterator[PostgresCluster]:
    """A running PostgreSQL 15 cluster with TimescaleDB preloaded and a migrated template database."""
    cluster = PostgresCluster(service_dir / "pg", free_port(), settings=TEST_PG_SETTINGS)
    cluster.start()
    try:
        dsn = cluster.create_database(TEMPLATE_DB)
        asyncio.run(apply_migrations(dsn))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def database_url(pg_cluster: PostgresCluster, request: pytest.FixtureRequest) -> str:
    """A fresh database for this test, cloned from the migrated template."""
    name = f"t{next(_db_counter)}_{request.node.name[:30]}".lower()
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return pg_cluster.create_database(name, template=TEMPLATE_DB)


@pytest.fixture(scope="session")
def mqtt_broker(service_dir: Path) -> Iterator[MosquittoBroker]:
    """A running Mosquitto broker (persistence on, queue limits removed)."""
    broker = MosquittoBroker(service_dir / "mosquitto", free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mqtt_prefix() -> str:
    """A unique MQTT topic prefix for this test, so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def tansu_broker(service_dir: Path) -> Iterator[TansuBroker]:
    """A running Tansu (Kafka-protocol) broker, memory storage."""
    broker = TansuBroker(service_dir, free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tansu_broker: TansuBroker) -> str:
    """The Kafka bootstrap address of the session's Tansu broker."""
    return tansu_broker.bootstrap


@pytest.fixture
async def kafka_topics(kafka_bootstrap: str) -> KafkaTopics:
    """A readings topic (3 partitions) and a dead-letter topic (1 partition), unique to this test."""
    suffix = uuid.uuid4().hex[:10]
    topics = KafkaTopics(readings=f"readings.{suffix}", dlq=f"readings.dlq.{suffix}")
    await ensure_topics(kafka_bootstrap, {topics.readings: 3, topics.dlq: 1})
    return topics


@pytest.fixture(scope="session")
def service_env(mqtt_broker: MosquittoBroker, kafka_bootstrap: str) -> dict[str, str]:
    """Environment for subprocesses of ours (``cityingest bridge`` ...) pointing at the session services."""
    env = dict(os.environ)
    env.update(
        {
            "CITYINGEST_MQTT_HOST": mqtt_broker.host,
            "CITYINGEST_MQTT_PORT": str(mqtt_broker.port),
            "CITYINGEST_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CITYINGEST_KAFKA_IDEMPOTENCE": "false",
        }
    )
    return env
