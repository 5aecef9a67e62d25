"""The batch transaction against a real TimescaleDB: exactly-once folding, devices, offsets, retention."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from consumers.batch import prepare
from consumers.maintenance import run_retention
from consumers.metrics import ConsumerMetrics
from consumers.rollup import aggregate
from consumers.sink import apply_batch, drop_old_readings, stored_offsets
from core.readings import Envelope, Reading, to_us
from tests.consumers.storecheck import diff, recomputed_rollups, stored_readings, stored_rollups
from tests.consumers.streams import COUNTERS, Record, as_records, first_seen, make_stream, seeded

pytestmark = pytest.mark.integration

GROUP = "g"


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(database_url)
    try:
        yield c
    finally:
        await c.close()


async def apply_records(
    conn: asyncpg.Connection, records: list[Record], consumer: str = "c1", *, assume_new: bool = False
) -> int:
    batch = prepare(records, component_id=consumer, now_us=0)
    applied = await apply_batch(
        conn, batch, counters=sorted(COUNTERS), group_id=GROUP, consumer_id=consumer, assume_new=assume_new
    )
    assert applied.stored == len(batch.rows) - applied.inserted
    return applied.inserted


async def assert_store_is_truth(conn: asyncpg.Connection, envelopes: list[Envelope]) -> None:
    truth_rows = first_seen(envelopes)
    assert await stored_readings(conn) == truth_rows
    stored = await stored_rollups(conn)
    from_raw = await recomputed_rollups(conn, COUNTERS)
    truth = aggregate(truth_rows.values(), COUNTERS)
    assert stored == from_raw, diff(stored, from_raw)
    assert stored == truth, diff(stored, truth)


@pytest.mark.parametrize("assume_new", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_batches_fold_to_the_truth(
    conn: asyncpg.Connection, seed: int, assume_new: bool
) -> None:
    rnd = seeded(seed)
    envelopes = make_stream(rnd, devices=12, messages=600)
    records = as_records(envelopes)
    i = 0
    while i < len(records):
        n = rnd.randint(1, 80)
        await apply_records(conn, records[i : i + n], assume_new=assume_new)
        i += n
    await assert_store_is_truth(conn, envelopes)
    # Late counter readings were part of the stream, so corrections really were exercised.
    latest: dict[tuple[str, str], int] = {}
    late = 0
    for env in envelopes:
        for r in env.readings:
            key = (env.device_id, r.metric)
            late += r.metric in COUNTERS and r.ts_us < latest.get(key, r.ts_us)
            latest[key] = max(latest.get(key, r.ts_us), r.ts_us)
    assert late > 10


@pytest.mark.parametrize("assume_new", [False, True])
async def test_replayed_batch_changes_nothing(conn: asyncpg.Connection, assume_new: bool) -> None:
    envelopes = make_stream(seeded(7), devices=5, messages=120)
    records = as_records(envelopes)
    assert await apply_records(conn, records, assume_new=assume_new) > 0
    before = await stored_rollups(conn)
    assert await apply_records(conn, records, assume_new=assume_new) == 0
    assert await stored_rollups(conn) == before
    await assert_store_is_truth(conn, envelopes)


async def test_plain_insertion_falls_back_when_part_of_the_batch_is_stored(conn: asyncpg.Connection) -> None:
    envelopes = make_stream(seeded(8), devices=6, messages=200)
    records = as_records(envelopes)
    await apply_records(conn, records[:120], assume_new=True)
    stored = await conn.fetchval("SELECT count(*) FROM readings")
    overlap = prepare(records[60:], component_id="c1", now_us=0)
    applied = await apply_batch(
        conn, overlap, counters=sorted(COUNTERS), group_id=GROUP, consumer_id="c1", assume_new=True
    )
    assert applied.stored > 0
    assert applied.inserted == await conn.fetchval("SELECT count(*) FROM readings") - stored
    await assert_store_is_truth(conn, envelopes)


async def test_a_rolled_back_batch_leaves_nothing_staged(conn: asyncpg.Connection) -> None:
    """The staging table is per session: rows of a batch that did not commit never reach the next one."""
    envelopes = make_stream(seeded(9), devices=4, messages=80)
    records = as_records(envelopes)
    tx = conn.transaction()
    await tx.start()
    await apply_records(conn, records[:40])
    await tx.rollback()
    await apply_records(conn, records[40:], assume_new=True)
    await apply_records(conn, records[:40], assume_new=True)
    await assert_store_is_truth(conn, envelopes)


async def test_batches_applied_inside_one_outer_transaction(conn: asyncpg.Connection) -> None:
    envelopes = make_stream(seeded(10), devices=4, messages=80)
    records = as_records(envelopes)
    async with conn.transaction():
        for i in range(0, len(records), 20):
            await apply_records(conn, records[i : i + 20], assume_new=True)
            # Nothing of this batch is left staged for the next one.
            assert await conn.fetchval("SELECT count(*) FROM pg_temp.cityingest_batch") == 0
    await assert_store_is_truth(conn, envelopes)


@pytest.mark.parametrize("assume_new", [False, True])
async def test_two_connections_applying_the_same_records_count_once(
    conn: asyncpg.Connection, database_url: str, assume_new: bool
) -> None:
    """What happens when two consumers briefly own a partition during a rebalance."""
    envelopes = make_stream(seeded(11), devices=8, messages=400)
    records = as_records(envelopes)
    other = await asyncpg.connect(database_url)
    try:
        for i in range(0, len(records), 50):
            chunk = records[i : i + 50]
            await asyncio.gather(
                apply_records(conn, chunk, "c1", assume_new=assume_new),
                apply_records(other, chunk, "c2", assume_new=assume_new),
            )
    finally:
        await other.close()
    await assert_store_is_truth(conn, envelopes)


@pytest.mark.parametrize("assume_new", [False, True])
async def test_late_counter_reading_moves_consumption_between_buckets(
    conn: asyncpg.Connection, assume_new: bool
) -> None:
    t0 = to_us(datetime(2024, 3, 31, 22, 30, tzinfo=UTC))
    hour = 3_600_000_000

    def env(ts: int, value: float) -> Envelope:
        return Envelope("m-1", "power", "b", ts, (Reading("energy_import_kwh", ts, value, 0),))

    stream = [env(t0, 100.0), env(t0 + 2 * hour, 130.0)]  # 22:30 Mar 31 and 00:30 Apr 1
    await apply_records(conn, as_records(stream, partitions=1), assume_new=assume_new)
    late = [env(t0 + hour, 120.0)]  # 23:30 Mar 31
    await apply_records(conn, as_records(late, partitions=1), assume_new=assume_new)
    monthly = {
        r["bucket"].month: r["increase"]
        for r in await conn.fetch("SELECT bucket, increase FROM readings_monthly")
    }
    assert monthly == {3: 20.0, 4: 10.0}
    await assert_store_is_truth(conn, stream + late)


async def test_devices_register_themselves_and_keep_operator_fields(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO devices (device_id, domain, status, provenance, district) "
        "VALUES ('known', 'water', 'active', 'official', 'North')"
    )
    base = to_us(datetime(2024, 6, 1, tzinfo=UTC))
    stream = [
        Envelope("known", "water", "b", base + 5, (Reading("water_flow", base, 1.0, 0),)),
        Envelope("stranger", "building", "b", base + 7, (Reading("temperature", base, 20.0, 0),)),
        Envelope(
            "stranger", "building", "b", base + 99, (Reading("temperature", base + 60_000_000, 2.0, 0),)
        ),
    ]
    await apply_records(conn, as_records(stream, partitions=1))
    rows = {r["device_id"]: r for r in await conn.fetch("SELECT * FROM devices")}
    assert (rows["known"]["status"], rows["known"]["provenance"], rows["known"]["district"]) == (
        "active",
        "official",
        "North",
    )
    stranger = rows["stranger"]
    assert stranger["status"] == "unregistered"
    assert (stranger["provenance"], stranger["domain"]) == ("unknown", "building")
    assert to_us(stranger["first_seen"]) == base + 7
    assert to_us(stranger["last_seen"]) == base + 99
    assert to_us(stranger["last_reading_at"]) == base + 60_000_000
    # An older record replayed later does not move last_seen backwards.
    await apply_records(conn, as_records(stream[1:2], partitions=1))
    last_seen = await conn.fetchval("SELECT last_seen FROM devices WHERE device_id = 'stranger'")
    assert to_us(last_seen) == base + 99


async def test_offsets_are_stored_and_never_go_backwards(conn: asyncpg.Connection) -> None:
    envelopes = make_stream(seeded(3), devices=4, messages=30)
    records = as_records(envelopes, topic="t", partitions=2)
    await apply_records(conn, records)
    expected = {p: max(r.offset for r in records if r.partition == p) + 1 for p in (0, 1)}
    assert await stored_offsets(conn, GROUP, "t", [0, 1, 2]) == expected
    await apply_records(conn, records[:3], "late-consumer")
    assert await stored_offsets(conn, GROUP, "t", [0, 1]) == expected
    assert await stored_offsets(conn, "other-group", "t", [0, 1]) == {}


async def test_undecodable_records_only_advance_the_offset(conn: asyncpg.Connection) -> None:
    records = [Record("t", 0, 0, b"x", b"not json"), Record("t", 0, 1, None, None)]
    batch = prepare(records, component_id="c1", now_us=0)
    assert [d.origin for d in batch.dead_letters] == ["t/0/0", "t/0/1"]
    await apply_batch(conn, batch, counters=[], group_id=GROUP, consumer_id="c1")
    assert await stored_offsets(conn, GROUP, "t", [0]) == {0: 2}
    assert await conn.fetchval("SELECT count(*) FROM readings") == 0


async def test_retention_drops_old_raw_chunks_and_keeps_rollups(conn: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=120), now - timedelta(days=2)
    stream = [
        Envelope("d", "building", "b", to_us(t), (Reading("temperature", to_us(t), 20.0, 0),))
        for t in (old, recent)
    ]
    await apply_records(conn, as_records(stream, partitions=1))
    rollups_before = await stored_rollups(conn)
    dropped = await drop_old_readings(conn, timedelta(days=90).total_seconds())
    assert dropped == 1
    rows = await conn.fetch("SELECT ts FROM readings")
    assert [to_us(r["ts"]) for r in rows] == [to_us(recent)]
    assert await stored_rollups(conn) == rollups_before
    assert await drop_old_readings(conn, timedelta(days=90).total_seconds()) == 0


async def test_retention_task_reports_dropped_chunks(conn: asyncpg.Connection, database_url: str) -> None:
    old = datetime.now(UTC) - timedelta(days=400)
    stream = [Envelope("d", "building", "b", to_us(old), (Reading("temperature", to_us(old), 1.0, 0),))]
    await apply_records(conn, as_records(stream, partitions=1))
    metrics = ConsumerMetrics()
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=1)
    try:
        assert await run_retention(pool, 90, metrics) == 1
    finally:
        await pool.close()
    assert "cityingest_consumer_retention_chunks_dropped_total 1.0" in metrics.render().decode()
    assert await conn.fetchval("SELECT count(*) FROM readings") == 0
    assert await conn.fetchval("SELECT sum(count) FROM readings_monthly") == 1


async def test_retention_is_left_to_timescaledb_when_its_policy_is_in_force(conn: asyncpg.Connection) -> None:
    old = datetime.now(UTC) - timedelta(days=400)
    stream = [Envelope("d", "building", "b", to_us(old), (Reading("temperature", to_us(old), 1.0, 0),))]
    await apply_records(conn, as_records(stream, partitions=1))
    await conn.execute("UPDATE store_features SET enabled = true WHERE name = 'retention_policy'")
    assert await drop_old_readings(conn, timedelta(days=90).total_seconds()) is None
    assert await conn.fetchval("SELECT count(*) FROM readings") == 1
