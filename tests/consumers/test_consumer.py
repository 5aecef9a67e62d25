"""The consumer against real Tansu and TimescaleDB: exactly once through kills, rebalances and outages."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from consumers.batch import KafkaRecord
from consumers.consumer import Consumer
from consumers.rollup import aggregate
from consumers.settings import ConsumerSettings
from consumers.shards import ShardApplier, Shards
from core.deadletter import decode_dead_letter
from core.errors import EnvelopeError
from core.readings import Envelope, decode_envelope, encode_envelope, ts_in_range
from devstack.postgres import PostgresCluster
from migrations import apply_migrations
from tests.conftest import KafkaTopics
from tests.consumers.harness import (
    ConsumerProcess,
    applied_records,
    consumer_env,
    eventually,
    group_for,
    produce,
    read_log,
    wait_applied,
)
from tests.consumers.storecheck import diff, recomputed_rollups, stored_readings, stored_rollups
from tests.consumers.streams import COUNTERS, first_seen, make_stream, seeded

pytestmark = pytest.mark.integration


async def assert_store_is_truth(
    dsn: str,
    envelopes: list[Envelope],
    bootstrap: str,
    topic: str,
    ends: dict[int, int],
    refused: Sequence[Envelope] = (),
) -> None:
    """Raw table == first occurrence (in log order) of every reading inside the time range every stage
    accepts; rollups == SQL recomputation == Python truth. The log must hold exactly the envelopes the test
    produced, plus ``refused``: envelopes that decode but the store refused (dead-lettered, never stored)."""
    logged = []
    for value in await read_log(bootstrap, topic, ends):
        try:
            logged.append(decode_envelope(value))
        except EnvelopeError:
            continue  # the poison records of the test: dead-lettered, never stored
    assert sorted(map(encode_envelope, logged)) == sorted(map(encode_envelope, [*envelopes, *refused]))
    refused_values = set(map(encode_envelope, refused))
    conn = await asyncpg.connect(dsn)
    try:
        truth_rows = {
            key: reading
            for key, reading in first_seen(
                [e for e in logged if encode_envelope(e) not in refused_values]
            ).items()
            if ts_in_range(reading.ts_us)
        }
        assert await stored_readings(conn) == truth_rows
        stored = await stored_rollups(conn)
        from_raw = await recomputed_rollups(conn, COUNTERS)
        truth = aggregate(truth_rows.values(), COUNTERS)
        assert stored == from_raw, diff(stored, from_raw)
        assert stored == truth, diff(stored, truth)
    finally:
        await conn.close()


def settings_for(dsn: str, bootstrap: str, topics: KafkaTopics, **extra: object) -> ConsumerSettings:
    return ConsumerSettings(
        database_url=dsn,
        kafka_bootstrap=bootstrap,
        readings_topic=topics.readings,
        dlq_topic=topics.dlq,
        group_id=group_for(topics.readings),
        consumer_id="in-process",
        kafka_idempotence=False,
        http_port=0,
        retention_days=100_000,
        kafka_session_timeout_ms=6000,
        **extra,  # type: ignore[arg-type]
    )


async def read_dlq(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(out) < expected:
                for recs in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(r.value for r in recs if r.value is not None)
    finally:
        await consumer.stop()
    return out


async def test_stream_with_poison_records(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics
) -> None:
    """Readings land exactly once; undecodable records go to the DLQ and the consumer moves on."""
    envelopes = make_stream(seeded(21), devices=10, messages=400)
    garbage: list[Envelope | bytes] = [b"{not json", b'{"v": 99}', b'{"v":1,"device":"d\\u0000x"}']
    ends = await produce(
        kafka_bootstrap, kafka_topics.readings, [*envelopes[:200], *garbage, *envelopes[200:]]
    )
    async with Consumer(settings_for(database_url, kafka_bootstrap, kafka_topics)) as consumer:
        await wait_applied(database_url, kafka_topics.readings, ends)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{consumer.http_port}") as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert (await http.get("/healthz")).status_code == 200
            metrics = (await http.get("/metrics")).text
    assert "cityingest_consumer_records_total 403.0" in metrics
    assert 'cityingest_consumer_dead_letters_total{reason="envelope_undecodable"} 2.0' in metrics
    assert 'cityingest_consumer_dead_letters_total{reason="envelope_unsupported_version"} 1.0' in metrics
    assert "cityingest_consumer_duplicates_total" in metrics
    await assert_store_is_truth(database_url, envelopes, kafka_bootstrap, kafka_topics.readings, ends)
    letters = [decode_dead_letter(raw) for raw in await read_dlq(kafka_bootstrap, kafka_topics.dlq, 3)]
    assert sorted(dl.raw for dl in letters) == sorted(g for g in garbage if isinstance(g, bytes))
    assert {dl.source for dl in letters} == {"kafka"}
    assert all(dl.origin.startswith(f"{kafka_topics.readings}/") for dl in letters)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_kill_9_at_random_points_keeps_exactly_once(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics, tmp_path: Path
) -> None:
    rnd = seeded(4242)
    envelopes = make_stream(rnd, devices=30, messages=4000)
    env = consumer_env(
        dsn=database_url,
        bootstrap=kafka_bootstrap,
        topics=kafka_topics,
        consumer_id="killed",
        batch_max_records="40",
        batch_max_wait_ms="20",
    )
    proc = ConsumerProcess(env, tmp_path / "consumer.log")
    # The stream keeps arriving while the consumer is being killed.
    producing = asyncio.create_task(
        produce(kafka_bootstrap, kafka_topics.readings, envelopes, chunk=100, pause_s=1.5)
    )
    at_kill: list[int] = []
    try:
        for _ in range(5):
            before = await applied_records(database_url, kafka_topics.readings)
            proc.start()

            async def progressed(before: int = before) -> bool:
                # Once the stream is over there is no mid-stream left to kill in: stop waiting.
                return producing.done() or await applied_records(database_url, kafka_topics.readings) > before

            # Kill while batches are being applied: once this run has made progress, at a random moment.
            await eventually(progressed, 60, every_s=0.05)
            await asyncio.sleep(rnd.uniform(0.0, 1.5))
            proc.kill()
            at_kill.append(await applied_records(database_url, kafka_topics.readings))
        ends = await producing
        proc.start()
        await wait_applied(database_url, kafka_topics.readings, ends, within_s=120)
        assert proc.terminate() == 0
    finally:
        producing.cancel()
        proc.kill()
    total = sum(ends.values())
    assert sum(0 < n < total for n in at_kill) >= 3, (at_kill, total, proc.log()[-3000:])
    await assert_store_is_truth(database_url, envelopes, kafka_bootstrap, kafka_topics.readings, ends)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_rebalance_when_one_of_two_consumers_leaves(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics, tmp_path: Path
) -> None:
    envelopes = make_stream(seeded(99), devices=30, messages=3000)

    def process(name: str) -> ConsumerProcess:
        env = consumer_env(
            dsn=database_url,
            bootstrap=kafka_bootstrap,
            topics=kafka_topics,
            consumer_id=name,
            batch_max_records="40",
            batch_max_wait_ms="20",
        )
        return ConsumerProcess(env, tmp_path / f"{name}.log")

    first, second = process("first"), process("second")
    producing = asyncio.create_task(
        produce(kafka_bootstrap, kafka_topics.readings, envelopes, chunk=100, pause_s=1.0)
    )
    try:
        first.start()
        second.start()

        # Both consumers own partitions and apply batches before one of them leaves.
        async def both_applied() -> bool:
            conn = await asyncpg.connect(database_url)
            try:
                rows = await conn.fetch(
                    "SELECT consumer_id FROM consumer_offsets WHERE group_id = $1",
                    group_for(kafka_topics.readings),
                )
            finally:
                await conn.close()
            return {r["consumer_id"] for r in rows} == {"first", "second"}

        await eventually(both_applied, 60, every_s=0.3)
        second.kill()
        at_leave = await applied_records(database_url, kafka_topics.readings)
        left_mid_stream = not producing.done()
        ends = await producing
        await wait_applied(database_url, kafka_topics.readings, ends, within_s=120)
        assert first.terminate() == 0
    finally:
        producing.cancel()
        first.kill()
        second.kill()
    assert left_mid_stream, (at_leave, ends)
    assert first.log().count("partitions assigned") >= 2, first.log()[-3000:]
    await assert_store_is_truth(database_url, envelopes, kafka_bootstrap, kafka_topics.readings, ends)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_database_outage_pauses_and_resumes(
    own_cluster: PostgresCluster, kafka_bootstrap: str, kafka_topics: KafkaTopics
) -> None:
    dsn = await asyncio.to_thread(own_cluster.create_database, "store")
    await apply_migrations(dsn)
    envelopes = make_stream(seeded(5), devices=20, messages=2000)
    settings = settings_for(dsn, kafka_bootstrap, kafka_topics, batch_max_records=40, db_retry_max_s=1.0)
    async with (
        Consumer(settings) as consumer,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{consumer.http_port}") as http,
    ):
        producing = asyncio.create_task(
            produce(kafka_bootstrap, kafka_topics.readings, envelopes, chunk=100, pause_s=0.2)
        )
        try:

            async def some_applied() -> bool:
                return await applied_records(dsn, kafka_topics.readings) >= 300

            async def readiness_is(status: int) -> bool:
                return (await http.get("/readyz")).status_code == status

            await eventually(some_applied, 60)
            await asyncio.to_thread(own_cluster.stop)
            await eventually(lambda: readiness_is(503), 60)
            assert "cityingest_consumer_store_up 0.0" in (await http.get("/metrics")).text
            ends = await producing  # the stream goes on while the database is away
            await asyncio.sleep(2)
            await asyncio.to_thread(own_cluster.start)
            await wait_applied(dsn, kafka_topics.readings, ends)
            await eventually(lambda: readiness_is(200), 30)
        finally:
            producing.cancel()
    await assert_store_is_truth(dsn, envelopes, kafka_bootstrap, kafka_topics.readings, ends)


async def test_batches_are_bounded_by_bytes(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog is read in batches of about ``batch_max_bytes`` of values, not ``batch_max_records``."""
    envelopes = make_stream(seeded(31), devices=10, messages=600)
    ends = await produce(kafka_bootstrap, kafka_topics.readings, envelopes)
    fetched: list[int] = []
    prepare = ShardApplier.prepare

    def spy(self: ShardApplier, records: Sequence[KafkaRecord]) -> Shards:
        fetched.append(sum(len(r.value or b"") for r in records))
        return prepare(self, records)

    monkeypatch.setattr(ShardApplier, "prepare", spy)
    limit = 8192
    settings = settings_for(
        database_url, kafka_bootstrap, kafka_topics, batch_max_bytes=limit, batch_max_records=100_000
    )
    async with Consumer(settings):
        await wait_applied(database_url, kafka_topics.readings, ends)
    total = sum(len(encode_envelope(e)) for e in envelopes)
    assert sum(fetched) == total
    assert total > 10 * limit
    # One record past the budget at most, give or take the running estimate of record sizes.
    assert max(fetched) <= 2 * limit, fetched
    await assert_store_is_truth(database_url, envelopes, kafka_bootstrap, kafka_topics.readings, ends)


async def test_a_record_the_store_refuses_is_dead_lettered_and_the_rest_stored(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics
) -> None:
    """The database refuses data ``prepare`` accepted (here an operator's own CHECK on readings): the
    batch is retried record by record, the refused record goes to the DLQ, every other one is stored."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """
            CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.device_id = 'poison' THEN
                    RAISE EXCEPTION 'no poison here' USING ERRCODE = 'check_violation';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_poison BEFORE INSERT ON readings
            FOR EACH ROW EXECUTE FUNCTION refuse_poison();
            """
        )
    finally:
        await conn.close()
    envelopes = make_stream(seeded(41), devices=6, messages=300)
    poison = Envelope("poison", "water", "bridge-test", envelopes[0].received_us, envelopes[0].readings)
    ends = await produce(kafka_bootstrap, kafka_topics.readings, [*envelopes[:150], poison, *envelopes[150:]])
    async with Consumer(settings_for(database_url, kafka_bootstrap, kafka_topics)) as consumer:
        await wait_applied(database_url, kafka_topics.readings, ends)
        rejected = consumer.metrics.dead_letters.labels("store_rejected")._value.get()
    assert rejected == 1
    letters = [decode_dead_letter(raw) for raw in await read_dlq(kafka_bootstrap, kafka_topics.dlq, 1)]
    assert [dl.reason for dl in letters] == ["store_rejected"]
    assert letters[0].raw == encode_envelope(poison)
    assert "no poison here" in letters[0].message
    # Everything else is stored exactly once, rollups included; the log holds the poison too.
    await assert_store_is_truth(
        database_url, envelopes, kafka_bootstrap, kafka_topics.readings, ends, refused=[poison]
    )
