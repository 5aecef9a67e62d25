"""Benchmark of the consumer: readings/s into the store vs the database's own COPY ceiling, in one run.

    python -m bench.consume [--devices 10000] [--minutes 40] [--database-url ... --kafka-bootstrap ...]

Starts a private PostgreSQL+TimescaleDB and Tansu (unless given), pre-fills a readings topic with a
realistic stream (each device reports one counter and two gauges every minute, a few late and
duplicated records), measures an asyncpg COPY of the same rows into a bare hypertable (the ceiling),
then runs one consumer (with its default settings unless told otherwise) until the whole backlog is
applied with every rollup level maintained. Not a test: it prints figures for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaProducer

from consumers.consumer import Consumer
from consumers.settings import ConsumerSettings
from core.readings import Envelope, Reading, encode_envelope, from_us, to_us
from devstack.kafka import ensure_topics
from devstack.postgres import PostgresCluster
from devstack.process import free_port
from devstack.tansu import TansuBroker
from migrations import apply_migrations

START = to_us(datetime(2025, 3, 1, tzinfo=UTC))
PARTITIONS = 6
DOMAIN_METRICS = {
    "building": ("energy_import_kwh", "temperature", "humidity"),
    "water": ("water_volume_m3", "water_flow", "pressure"),
    "power": ("energy_import_kwh", "voltage", "power_factor"),
}


def make_stream(devices: int, minutes: int, rnd: random.Random) -> list[Envelope]:
    """Every device once a minute, minute by minute; ~0.5% late and ~0.5% retransmitted records."""
    domains = sorted(DOMAIN_METRICS)
    meters = [rnd.uniform(0, 1000) for _ in range(devices)]
    out: list[Envelope] = []
    for minute in range(minutes):
        for d in range(devices):
            domain = domains[d % len(domains)]
            counter, g1, g2 = DOMAIN_METRICS[domain]
            ts = START + minute * 60_000_000 + (d * 7919) % 60_000_000
            if minute and rnd.random() < 0.005:
                ts -= rnd.randint(1, minute) * 60_000_000 + 1  # late (a new, earlier timestamp)
            meters[d] += rnd.uniform(0, 2)
            readings = (
                Reading(counter, ts, round(meters[d], 3), 0),
                Reading(g1, ts, round(rnd.uniform(0, 50), 2), 0),
                Reading(g2, ts, round(rnd.uniform(0, 1), 3), 0),
            )
            out.append(Envelope(f"{domain}-{d:05d}", domain, "bench-bridge", ts + 150_000, readings))
            if rnd.random() < 0.005:
                out.append(out[-1])  # retransmission
    return out


async def prefill(bootstrap: str, topic: str, stream: list[Envelope]) -> int:
    """Produce ``stream`` to ``topic`` keyed by device, as the bridge does; returns the bytes of values."""
    size = 0
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        acks="all",
        linger_ms=20,
        max_batch_size=1 << 20,
    )
    await producer.start()
    try:
        for i in range(0, len(stream), 20_000):
            futures = []
            for env in stream[i : i + 20_000]:
                value = encode_envelope(env)
                size += len(value)
                futures.append(await producer.send(topic, value, key=env.device_id.encode()))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return size


async def copy_ceiling(
    dsn: str, stream: list[Envelope], *, unique: bool, key_order: bool = False
) -> tuple[int, float]:
    """Rows/s of an asyncpg COPY of the same (unique) rows into a bare hypertable, 50,000 at a time.

    ``unique``: with the raw table's unique key (device, metric, ts), which any store that stores a
    retransmitted reading once must maintain; otherwise with no index at all. ``key_order``: each
    50,000 rows sorted by that key first (the consumer inserts each batch in key order).
    """
    seen: set[tuple[str, str, int]] = set()
    rows = []
    for env in stream:
        for r in env.readings:
            if (env.device_id, r.metric, r.ts_us) not in seen:
                seen.add((env.device_id, r.metric, r.ts_us))
                rows.append((env.device_id, r.metric, from_us(r.ts_us), r.value, r.flags))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE bench_copy (device_id text NOT NULL, metric text NOT NULL, ts timestamptz NOT NULL,"
            " value double precision NOT NULL, flags smallint NOT NULL)"
        )
        if unique:
            await conn.execute("ALTER TABLE bench_copy ADD UNIQUE (device_id, metric, ts)")
        await conn.execute(
            "SELECT create_hypertable('bench_copy', 'ts', chunk_time_interval => interval '1 day',"
            " create_default_indexes => false)"
        )
        chunks = [rows[i : i + 50_000] for i in range(0, len(rows), 50_000)]
        if key_order:
            for chunk in chunks:
                chunk.sort()
        started = time.perf_counter()
        for chunk in chunks:
            await conn.copy_records_to_table("bench_copy", records=chunk)
        elapsed = time.perf_counter() - started
        await conn.execute("DROP TABLE bench_copy")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return len(rows), elapsed


async def consume(
    dsn: str, bootstrap: str, topic: str, records: int, args: argparse.Namespace
) -> dict[str, float]:
    tuning = {"batch_max_records": args.batch, "db_pool_size": args.connections}
    settings = ConsumerSettings(
        database_url=dsn,
        kafka_bootstrap=bootstrap,
        readings_topic=topic,
        dlq_topic=f"{topic}.dlq",
        group_id="bench",
        consumer_id="bench",
        kafka_idempotence=False,
        http_port=0,
        retention_days=100_000,
        **{k: v for k, v in tuning.items() if v is not None},
    )
    print(
        f"consumer: batch_max_records={settings.batch_max_records}, "
        f"batch_max_bytes={settings.batch_max_bytes}, db_pool_size={settings.db_pool_size}"
    )
    conn = await asyncpg.connect(dsn)
    try:
        begun = time.perf_counter()
        first: tuple[float, int] | None = None
        async with Consumer(settings):
            started = time.perf_counter()
            while True:
                done = int(await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets"))
                now = time.perf_counter()
                if first is None and done > 0:
                    first = (now, done)
                if done >= records:
                    break
                await asyncio.sleep(0.25)
        finished = time.perf_counter()
        stored = int(await conn.fetchval("SELECT count(*) FROM readings"))
        in_rollups = [
            int(await conn.fetchval(f"SELECT sum(count) FROM {table}"))  # noqa: S608 - constant names
            for table in ("readings_hourly", "readings_daily", "readings_monthly")
        ]
    finally:
        await conn.close()
    assert first is not None
    assert [stored] * 3 == in_rollups, (stored, in_rollups)
    steady_readings = stored * (records - first[1]) / records
    return {
        "stored": stored,
        "startup_s": started - begun,
        "wall_s": finished - started,
        "steady_s": finished - first[0],
        "steady_rate": steady_readings / (finished - first[0]),
        "wall_rate": stored / (finished - started),
    }


async def run(args: argparse.Namespace) -> None:
    rnd = random.Random(args.seed)  # noqa: S311 - benchmark data, not secrets
    with tempfile.TemporaryDirectory(prefix="cityingest-bench-") as tmp:
        cluster = broker = None
        dsn, bootstrap = args.database_url, args.kafka_bootstrap
        try:
            if dsn is None:
                cluster = PostgresCluster(Path(tmp) / "pg", free_port())
                cluster.start()
                dsn = cluster.create_database("bench")
            if bootstrap is None:
                broker = TansuBroker(Path(tmp), free_port())
                broker.start()
                bootstrap = broker.bootstrap
            await apply_migrations(dsn)
            topic = f"bench.readings.{int(time.time())}"
            await ensure_topics(bootstrap, {topic: PARTITIONS, f"{topic}.dlq": 1})
            stream = make_stream(args.devices, args.minutes, rnd)
            readings = sum(len(e.readings) for e in stream)
            print(f"stream: {len(stream):,} records, {readings:,} readings from {args.devices:,} devices")
            t = time.perf_counter()
            await prefill(bootstrap, topic, stream)
            print(f"pre-filled the topic in {time.perf_counter() - t:.1f} s")
            rows, copy_s = await copy_ceiling(dsn, stream, unique=True)
            ceiling = rows / copy_s
            print(
                f"COPY ceiling (hypertable with the unique key): {rows:,} rows in {copy_s:.2f} s"
                f" = {ceiling:,.0f}/s"
            )
            rows, sorted_s = await copy_ceiling(dsn, stream, unique=True, key_order=True)
            print(
                f"COPY with the unique key, each 50,000 rows in key order: {rows:,} rows in {sorted_s:.2f} s"
                f" = {rows / sorted_s:,.0f}/s"
            )
            rows, bare_s = await copy_ceiling(dsn, stream, unique=False)
            bare = rows / bare_s
            print(
                f"COPY into a hypertable with no index at all: {rows:,} rows in {bare_s:.2f} s"
                f" = {bare:,.0f}/s"
            )
            result = await consume(dsn, bootstrap, topic, len(stream), args)
            rate = result["steady_rate"]
            print(
                f"consumer: {result['stored']:,.0f} readings stored, all rollup levels maintained; "
                f"start-up {result['startup_s']:.1f} s, then {result['wall_s']:.1f} s incl. group join "
                f"({result['wall_rate']:,.0f}/s), "
                f"steady {rate:,.0f} readings/s"
            )
            print(f"ratio to the COPY ceiling: {rate / ceiling:.0%} (target >= 35%), "
                  f"to the key-ordered COPY: {rate * sorted_s / rows:.0%}, "
                  f"to the index-free COPY: {rate / bare:.0%}; "
                  f"target 40,000/s {'met' if rate >= 40_000 else 'NOT met'}")  # fmt: skip
        finally:
            if broker is not None:
                broker.stop()
            if cluster is not None:
                cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=40, help="minutes of readings per device")
    parser.add_argument("--batch", type=int, help="consumer batch_max_records (default: the consumer's)")
    parser.add_argument("--connections", type=int, help="consumer db_pool_size (default: the consumer's)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", help="use this database instead of a private cluster")
    parser.add_argument("--kafka-bootstrap", help="use this Kafka instead of a private Tansu")
    parser.add_argument("--verbose", action="store_true", help="log every batch of the consumer")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.verbose:
        logging.getLogger("consumers").setLevel(logging.DEBUG)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
