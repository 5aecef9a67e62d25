"""Benchmark of the consumer catching up a backlog: its peak memory and rate, per record shape.

    python -m bench.catchup [--readings 1000000] [--shapes 1,3,50] [--set name=value ...]

For each shape (readings per Kafka record: 1 for single readings, 50 for SenML packs) it starts a private
PostgreSQL+TimescaleDB and Tansu, pre-fills ``readings`` with a backlog of that shape from 2,000
devices, then starts ``python -m cli consume`` with its default settings (or ``--set``) as a process
of its own and reports its peak resident memory (``VmHWM``) until the backlog is stored. A consumer
that is restarted after an outage reads full batches at once, so this is where its memory peaks; the
target is the end-to-end one (issue 6): under 300 MB. Not a test: it prints figures for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.consume import prefill
from bench.pipeline import ROOT, child_env
from bench.procmem import status_kb
from core.readings import Envelope, Reading
from devstack.kafka import ensure_topics
from devstack.postgres import PostgresCluster
from devstack.process import ChildProcess, free_port
from devstack.tansu import TansuBroker
from migrations import apply_migrations

DEVICES = 2_000
START_US = 1_750_000_000_000_000
TARGET_MB = 300


def backlog(shape: int, readings: int) -> list[Envelope]:
    """Records of ``shape`` readings each, every device in turn, one minute apart."""
    out = []
    for i in range(readings // shape):
        device = f"building-{i % DEVICES:05d}"
        base = START_US + (i // DEVICES) * shape * 60_000_000
        readings_of = tuple(
            Reading("temperature", base + j * 60_000_000, 20.0 + (i + j) % 97 / 10, 0) for j in range(shape)
        )
        out.append(Envelope(device, "building", "bench-bridge", base, readings_of))
    return out


async def one_shape(shape: int, readings: int, extra: dict[str, str]) -> dict[str, float]:
    records = backlog(shape, readings)
    with tempfile.TemporaryDirectory(prefix="cityingest-catchup-") as tmp:
        pg = PostgresCluster(Path(tmp) / "pg", free_port())
        kafka = TansuBroker(Path(tmp), free_port())
        proc: ChildProcess | None = None
        try:
            pg.start()
            dsn = pg.create_database("bench")
            kafka.start()
            await apply_migrations(dsn)
            await ensure_topics(kafka.bootstrap, {"readings": 6, "readings.dlq": 1})
            size = await prefill(kafka.bootstrap, "readings", records)
            env = child_env(
                database_url=dsn,
                kafka_bootstrap=kafka.bootstrap,
                kafka_idempotence="false",
                log_level="WARNING",
                **extra,
            )
            cmd = [sys.executable, "-m", "cli", "consume", "--http-port", str(free_port())]
            proc = ChildProcess("consumer", cmd, log_path=Path(tmp) / "consumer.log", env=env, cwd=ROOT)
            proc.start()
            pid = proc.pid
            assert pid is not None
            conn = await asyncpg.connect(dsn)
            started = time.perf_counter()
            peak_kb = 0
            try:
                while True:
                    await asyncio.sleep(0.2)
                    peak_kb = status_kb(pid, "VmHWM") or peak_kb
                    if not proc.alive():
                        raise SystemExit(f"the consumer exited with {proc.returncode()}; see its log")
                    done = await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets")
                    if done >= len(records):
                        break
                elapsed = time.perf_counter() - started
                peak_kb = status_kb(pid, "VmHWM") or peak_kb
                stored = int(await conn.fetchval("SELECT count(*) FROM readings"))
                monthly = int(await conn.fetchval("SELECT coalesce(sum(count), 0) FROM readings_monthly"))
            finally:
                await conn.close()
        finally:
            if proc is not None:
                proc.stop()
            kafka.stop()
            pg.stop()
    if stored != len(records) * shape or monthly != stored:
        raise SystemExit(
            f"shape {shape}: stored {stored:,}, monthly {monthly:,}, sent {len(records) * shape:,}"
        )
    return {
        "records": len(records),
        "bytes": size,
        "readings": stored,
        "s": elapsed,
        "peak_mb": peak_kb / 1024,
    }


async def run(args: argparse.Namespace) -> None:
    extra = dict(item.split("=", 1) for item in args.set)
    print(f"consumer catching up a backlog of {args.readings:,} readings per shape")
    print(f"consumer settings: {extra or 'defaults'}")
    print(f"{'readings/record':>15} {'records':>9} {'MB of values':>12} {'time':>7} {'readings/s':>11} "
          f"{'peak memory':>12}  target < {TARGET_MB} MB")  # fmt: skip
    worst = 0.0
    for shape in args.shapes:
        r = await one_shape(shape, args.readings, extra)
        worst = max(worst, r["peak_mb"])
        verdict = "met" if r["peak_mb"] < TARGET_MB else "NOT met"
        print(f"{shape:>15} {r['records']:>9,.0f} {r['bytes'] / 1e6:>12.1f} {r['s']:>6.1f}s "
              f"{r['readings'] / r['s']:>11,.0f} {r['peak_mb']:>9.0f} MB  {verdict}", flush=True)  # fmt: skip
    print(f"result: peak {worst:.0f} MB, target < {TARGET_MB} MB {'met' if worst < TARGET_MB else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=1_000_000, help="readings in each backlog")
    parser.add_argument(
        "--shapes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 3, 50],
        help="readings per record, comma-separated",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a consumer setting (CITYINGEST_NAME)",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
