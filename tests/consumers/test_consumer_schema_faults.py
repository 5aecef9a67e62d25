"""The consumer process (``cityingest consume``, as compose and Kubernetes run it) when the schema breaks
under it: a rollup table dropped, its privileges on a table revoked. No retry can cure that: it stops
with the SQLSTATE in its log and a non-zero status, having committed no batch in part, and once the
schema is repaired and the process restarted the store equals the truth (nothing lost, nothing twice).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from core.readings import decode_envelope, ts_in_range
from migrations.runner import MIGRATIONS_DIR
from tests.conftest import KafkaTopics
from tests.consumers.harness import (
    ConsumerProcess,
    applied_records,
    consumer_env,
    eventually,
    produce,
    read_log,
    stored_offsets,
    wait_applied,
)
from tests.consumers.storecheck import diff, recomputed_rollups, stored_readings, stored_rollups
from tests.consumers.streams import COUNTERS, first_seen, make_stream, seeded
from tests.consumers.test_consumer import assert_store_is_truth

pytestmark = pytest.mark.integration


async def assert_store_holds_exactly_its_offsets(dsn: str, bootstrap: str, topic: str) -> None:
    """Every batch is all or nothing: the store holds the readings of the records below its offsets
    (and no other), and rollups that are exactly those readings'."""
    offsets = await stored_offsets(dsn, topic)
    logged = [decode_envelope(v) for v in await read_log(bootstrap, topic, offsets)]
    truth = {k: r for k, r in first_seen(logged).items() if ts_in_range(r.ts_us)}
    conn = await asyncpg.connect(dsn)
    try:
        assert await stored_readings(conn) == truth
        stored, from_raw = await stored_rollups(conn), await recomputed_rollups(conn, COUNTERS)
        assert stored == from_raw, diff(stored, from_raw)
    finally:
        await conn.close()


async def run_through_fault(
    dsn: str,
    kafka_bootstrap: str,
    topics: KafkaTopics,
    tmp_path: Path,
    *,
    seed: int,
    consumer_dsn: str | None = None,
    break_schema: Callable[[asyncpg.Connection], Awaitable[None]],
    repair_schema: Callable[[asyncpg.Connection], Awaitable[None]],
    sqlstate: str,
) -> None:
    """Break the schema while the consumer applies a stream; see it stop; repair, restart, compare."""
    envelopes = make_stream(seeded(seed), devices=20, messages=3_000)
    env = consumer_env(
        dsn=consumer_dsn or dsn,
        bootstrap=kafka_bootstrap,
        topics=topics,
        consumer_id="schema",
        batch_max_records="40",
        batch_max_wait_ms="20",
    )
    proc = ConsumerProcess(env, tmp_path / "consumer.log")
    producing = asyncio.create_task(
        produce(kafka_bootstrap, topics.readings, envelopes, chunk=100, pause_s=0.3)
    )
    admin = await asyncpg.connect(dsn)
    try:
        proc.start()

        async def progressed() -> bool:
            assert proc.exit_code() is None, proc.log()[-5000:]
            return await applied_records(dsn, topics.readings) > 0

        await eventually(progressed, 90, every_s=0.05)
        await break_schema(admin)

        async def exited() -> bool:
            return proc.exit_code() is not None

        await eventually(exited, 60)
        code = proc.exit_code()
        assert code not in (None, 0), proc.log()[-5000:]
        assert re.search(rf"consumer schema failed, exiting: \w+ \(SQLSTATE {sqlstate}\)", proc.log()), (
            proc.log()[-5000:]
        )
        proc.kill()
        await repair_schema(admin)
        await assert_store_holds_exactly_its_offsets(dsn, kafka_bootstrap, topics.readings)
        stopped_at = await applied_records(dsn, topics.readings)
        proc.start()
        ends = await producing
        assert stopped_at < sum(ends.values())  # the fault hit a stream in progress
        await wait_applied(dsn, topics.readings, ends, within_s=120)
        assert proc.exit_code() is None, proc.log()[-5000:]
        assert proc.terminate() == 0, proc.log()[-5000:]
    finally:
        producing.cancel()
        proc.kill()
        await admin.close()
    await assert_store_is_truth(dsn, envelopes, kafka_bootstrap, topics.readings, ends)


def _daily_create_statements() -> list[str]:
    """The statements of the migration that create ``readings_daily`` (the table, its index)."""
    sql = (MIGRATIONS_DIR / "0004_rollups.sql").read_text()
    found = [line for line in sql.splitlines() if line.startswith("CREATE") and " readings_daily" in line]
    assert len(found) == 2, found
    # LIKE readings_hourly INCLUDING ALL now copies the hourly table's bucket index too (the migration
    # created that index after this table), under the very name the next statement gives it.
    return [line.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ") for line in found]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_rollup_table_dropped_under_the_consumer_stops_it_until_restored(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics, tmp_path: Path
) -> None:
    async def drop(admin: asyncpg.Connection) -> None:
        # A backup of its rows in the same transaction as the drop, to restore it as an operator would.
        async with admin.transaction():
            await admin.execute("LOCK TABLE readings_daily IN ACCESS EXCLUSIVE MODE")
            await admin.execute("CREATE TABLE saved_daily AS TABLE readings_daily")
            await admin.execute("DROP TABLE readings_daily")

    async def restore(admin: asyncpg.Connection) -> None:
        async with admin.transaction():
            for statement in _daily_create_statements():
                await admin.execute(statement)
            await admin.execute("INSERT INTO readings_daily SELECT * FROM saved_daily")
            await admin.execute("DROP TABLE saved_daily")

    await run_through_fault(
        database_url, kafka_bootstrap, kafka_topics, tmp_path, seed=1401,
        break_schema=drop, repair_schema=restore, sqlstate="42P01",
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_privileges_revoked_under_the_consumer_stop_it_until_granted(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics, tmp_path: Path
) -> None:
    # The consumer runs as a role of its own that owns the schema (retention drops chunks, which only an
    # owner may), not as the superuser, whom no privilege binds.
    dbname = urlsplit(database_url).path.lstrip("/")
    role = f"{dbname}_consumer"[:63]
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        for (table,) in await admin.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"):
            await admin.execute(f'ALTER TABLE "{table}" OWNER TO "{role}"')
    finally:
        await admin.close()
    parts = urlsplit(database_url)
    consumer_dsn = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))

    async def revoke(admin: asyncpg.Connection) -> None:
        await admin.execute(f'REVOKE INSERT, UPDATE ON readings_monthly FROM "{role}"')

    async def grant(admin: asyncpg.Connection) -> None:
        await admin.execute(f'GRANT INSERT, UPDATE ON readings_monthly TO "{role}"')

    await run_through_fault(
        database_url, kafka_bootstrap, kafka_topics, tmp_path, seed=1402, consumer_dsn=consumer_dsn,
        break_schema=revoke, repair_schema=grant, sqlstate="42501",
    )  # fmt: skip
