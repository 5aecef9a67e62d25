"""The consumer process (``cityingest consume``, as deployed) through repeated database shutdowns.

PostgreSQL is stopped (``pg_ctl stop -m fast`` and ``-m immediate``) again and again while the consumer
applies batches and restarted a few seconds later: whatever the driver raises when its connections are
cut mid-query, mid-COPY or mid-transaction, the consumer waits for the store and never exits, and at the
end the store holds every reading exactly once.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import asyncpg
import pytest

from devstack.postgres import PG_BIN, PostgresCluster
from devstack.process import drop_privileges
from migrations import apply_migrations
from tests.conftest import KafkaTopics
from tests.consumers.harness import (
    ConsumerProcess,
    applied_records,
    consumer_env,
    eventually,
    produce,
    wait_applied,
)
from tests.consumers.streams import make_stream, seeded
from tests.consumers.test_consumer import assert_store_is_truth

pytestmark = pytest.mark.integration


def pg_ctl_stop(cluster: PostgresCluster, mode: str) -> None:
    """Shut the cluster down as an operator would (``pg_ctl stop -m mode``), then reap the postmaster."""
    done = subprocess.run(
        [str(PG_BIN / "pg_ctl"), "stop", "-D", str(cluster.data_dir), "-m", mode, "-w", "-t", "60"],
        check=False,
        capture_output=True,
        text=True,
        **drop_privileges(cluster.os_user),
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    cluster.stop()


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_consumer_process_survives_repeated_database_shutdowns(
    own_cluster: PostgresCluster, kafka_bootstrap: str, kafka_topics: KafkaTopics, tmp_path: Path
) -> None:
    rnd = seeded(808)
    dsn = await asyncio.to_thread(own_cluster.create_database, "store")
    await apply_migrations(dsn)
    envelopes = make_stream(rnd, devices=30, messages=20_000)
    env = consumer_env(
        dsn=dsn,
        bootstrap=kafka_bootstrap,
        topics=kafka_topics,
        consumer_id="outages",
        batch_max_records="40",
        batch_max_wait_ms="20",
        db_retry_max_s="0.5",
    )
    proc = ConsumerProcess(env, tmp_path / "consumer.log")
    producing = asyncio.create_task(
        produce(kafka_bootstrap, kafka_topics.readings, envelopes, chunk=100, pause_s=0.4)
    )
    # Which error a cut connection raises depends on timing (see consumers/storeerrors.py); sixteen
    # shutdowns made the old consumer exit in two runs of three.
    modes = ["fast", "immediate"] * 8
    at_stop: list[int] = []
    try:
        proc.start()
        for mode in modes:
            before = await applied_records(dsn, kafka_topics.readings)

            async def progressed(before: int = before) -> bool:
                assert proc.exit_code() is None, (proc.exit_code(), proc.log()[-5000:])
                return await applied_records(dsn, kafka_topics.readings) > before

            # Stop while batches are being applied: once the consumer has made progress again.
            await eventually(progressed, 90, every_s=0.05)
            await asyncio.sleep(rnd.uniform(0.0, 0.3))
            at_stop.append(await applied_records(dsn, kafka_topics.readings))
            await asyncio.to_thread(pg_ctl_stop, own_cluster, mode)
            await asyncio.sleep(rnd.uniform(2.0, 4.0))
            assert proc.exit_code() is None, (mode, proc.exit_code(), proc.log()[-5000:])
            await asyncio.to_thread(own_cluster.start)
            assert proc.exit_code() is None, (mode, proc.exit_code(), proc.log()[-5000:])
        ends = await producing
        await wait_applied(dsn, kafka_topics.readings, ends, within_s=120)
        assert proc.exit_code() is None, proc.log()[-5000:]
        assert proc.terminate() == 0, proc.log()[-5000:]
    finally:
        producing.cancel()
        proc.kill()
    total = sum(ends.values())
    # The shutdowns hit a stream in progress, not a consumer with nothing left to do.
    assert sum(0 < n < total for n in at_stop) >= len(modes) - 1, (at_stop, total)
    assert "the store is unavailable" in proc.log()
    await assert_store_is_truth(dsn, envelopes, kafka_bootstrap, kafka_topics.readings, ends)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_consumer_process_survives_its_connections_being_terminated(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics, tmp_path: Path
) -> None:
    """The server ends the consumer's sessions mid-batch again and again (``pg_terminate_backend``, as
    an administrator, a failover or a pooler does): the same FATAL 57P01 as a shutdown, far more often."""
    rnd = seeded(909)
    envelopes = make_stream(rnd, devices=30, messages=8_000)
    env = consumer_env(
        dsn=database_url,
        bootstrap=kafka_bootstrap,
        topics=kafka_topics,
        consumer_id="terminated",
        batch_max_records="40",
        batch_max_wait_ms="20",
        db_retry_max_s="0.2",
    )
    proc = ConsumerProcess(env, tmp_path / "consumer.log")
    producing = asyncio.create_task(
        produce(kafka_bootstrap, kafka_topics.readings, envelopes, chunk=100, pause_s=0.3)
    )
    admin = await asyncpg.connect(database_url)
    terminated = 0
    try:
        proc.start()
        # Any of its sessions, mid-query or waiting in its pool, while the stream flows (and on after it
        # ended, if a loaded machine let the stream end before 20 were cut).
        deadline = asyncio.get_running_loop().time() + 120
        states = ["active", "idle", "idle in transaction"]
        while not producing.done() or (terminated < 20 and asyncio.get_running_loop().time() < deadline):
            terminated += await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'cityingest-consumer terminated' AND state = ANY($1::text[])",
                states,
            )
            assert proc.exit_code() is None, (terminated, proc.exit_code(), proc.log()[-5000:])
            await asyncio.sleep(rnd.uniform(0.05, 0.3))
        ends = await producing
        await wait_applied(database_url, kafka_topics.readings, ends, within_s=120)
        assert proc.exit_code() is None, proc.log()[-5000:]
        assert proc.terminate() == 0, proc.log()[-5000:]
    finally:
        producing.cancel()
        proc.kill()
        await admin.close()
    assert terminated >= 20, terminated
    await assert_store_is_truth(database_url, envelopes, kafka_bootstrap, kafka_topics.readings, ends)
