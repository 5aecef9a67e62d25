"""The consumer's lifecycle in process: states, a second start refused, stop twice or cancelled, and a
task that dies (a side task, a rebalance that cannot read the store) failing the consumer loudly."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import asyncpg
import httpx
import pytest

from consumers.consumer import Consumer
from core.errors import StoreUnavailable
from core.lifecycle import State, StateError
from devstack.postgres import PostgresCluster
from migrations import apply_migrations
from tests.conftest import KafkaTopics
from tests.consumers.harness import ConsumerProcess, consumer_env, eventually
from tests.consumers.test_consumer import settings_for

pytestmark = pytest.mark.integration


def state_of(consumer: Consumer) -> State:
    """The consumer's state, read anew (mypy would keep the state an earlier assertion narrowed)."""
    return consumer.state


async def _status(port: int, path: str) -> int:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        return (await http.get(path)).status_code


async def _refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


async def _break_retention(dsn: str) -> None:
    """A fault no retry can cure in the retention task only: the table it reads first is gone."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE store_features CASCADE")
    finally:
        await conn.close()


@pytest.mark.timeout(120)
async def test_a_second_start_is_refused_and_stop_is_idempotent(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics
) -> None:
    consumer = Consumer(settings_for(database_url, kafka_bootstrap, kafka_topics))
    assert state_of(consumer) is State.NEW
    with pytest.raises(StateError):
        await consumer.wait()
    await consumer.start()
    try:
        assert state_of(consumer) is State.RUNNING
        with pytest.raises(StateError, match="running"):
            await consumer.start()
        assert state_of(consumer) is State.RUNNING
        assert await _status(consumer.http_port, "/healthz") == 200
    finally:
        await consumer.stop()
    assert state_of(consumer) is State.STOPPED
    await consumer.stop()
    assert state_of(consumer) is State.STOPPED
    with pytest.raises(StateError, match="stopped"):
        await consumer.start()


@pytest.mark.timeout(120)
async def test_stop_cancelled_midway_still_closes_everything(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics
) -> None:
    consumer = Consumer(settings_for(database_url, kafka_bootstrap, kafka_topics))
    await consumer.start()
    port = consumer.http_port
    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.05)  # inside the cleanup: leaving the group, closing connections
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    # The cleanup went on, shielded; a second stop() waits for it to end rather than return at once.
    await consumer.stop()
    assert state_of(consumer) is State.STOPPED
    assert await _refuses_connections(port)
    await consumer.wait()  # stopped, not failed: nothing to raise


@pytest.mark.timeout(120)
async def test_a_side_task_that_dies_fails_the_consumer(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics
) -> None:
    """The retention task hits an error no retry cures: the consumer fails loudly, not just that task."""
    await _break_retention(database_url)
    async with Consumer(settings_for(database_url, kafka_bootstrap, kafka_topics)) as consumer:
        port = consumer.http_port

        async def unhealthy() -> bool:
            return await _status(port, "/healthz") == 503

        await eventually(unhealthy, 60)
        assert state_of(consumer) is State.FAILED
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert "SQLSTATE 42P01" in ready.json()["reasons"][0], ready.text
        with pytest.raises(asyncpg.UndefinedTableError):
            await consumer.wait()
    assert state_of(consumer) is State.FAILED


@pytest.mark.timeout(120)
async def test_rebalance_store_retry_is_bounded(
    own_cluster: PostgresCluster, kafka_bootstrap: str, kafka_topics: KafkaTopics
) -> None:
    """Partitions assigned while the store is down: the consumer waits for their offsets a bounded time,
    then fails (its supervisor restarts it) instead of holding up the whole group for good."""
    dsn = await asyncio.to_thread(own_cluster.create_database, "store")
    await apply_migrations(dsn)
    await asyncio.to_thread(own_cluster.stop)
    settings = settings_for(dsn, kafka_bootstrap, kafka_topics, assign_store_wait_s=2.0, db_retry_max_s=0.5)
    async with Consumer(settings) as consumer:
        with pytest.raises(StoreUnavailable, match="stored offsets"):
            async with asyncio.timeout(60):
                await consumer.wait()
        assert state_of(consumer) is State.FAILED
        assert await _status(consumer.http_port, "/healthz") == 503


@pytest.mark.timeout(120)
async def test_a_side_task_that_dies_makes_the_process_exit_non_zero(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics, tmp_path: Path
) -> None:
    await _break_retention(database_url)
    env = consumer_env(
        dsn=database_url,
        bootstrap=kafka_bootstrap,
        topics=kafka_topics,
        consumer_id="side-task",
    )
    proc = ConsumerProcess(env, tmp_path / "consumer.log")
    proc.start()
    try:

        async def exited() -> bool:
            return proc.exit_code() is not None

        await eventually(exited, 60)
    finally:
        code = proc.exit_code()
        proc.kill()
    assert code not in (None, 0), proc.log()[-3000:]
    assert "consumer side-task failed, exiting: UndefinedTableError (SQLSTATE 42P01)" in proc.log()
