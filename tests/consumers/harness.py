"""Running consumers against the test services: produce a stream, start/kill consumer processes, wait."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from core.readings import Envelope, encode_envelope
from tests.conftest import KafkaTopics


def group_for(topic: str) -> str:
    """A consumer group of one test (its topic is unique): other tests' dead members never join it."""
    return f"consumers-{topic}"


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float, every_s: float = 0.1) -> None:
    """Poll ``check`` until it holds; TimeoutError after ``within_s``."""
    async with asyncio.timeout(within_s):
        # Polling: the state is in other processes (the store, a consumer), there is no event to await.
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(every_s)


async def produce(
    bootstrap: str,
    topic: str,
    envelopes: Sequence[Envelope | bytes],
    *,
    chunk: int = 200,
    pause_s: float = 0.0,
) -> dict[int, int]:
    """Send envelopes (or raw values) keyed by device like the bridge; return partition -> end offset."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, acks="all", linger_ms=2
    )
    await producer.start()
    ends: dict[int, int] = {}
    try:
        for i in range(0, len(envelopes), chunk):
            futures = []
            for item in envelopes[i : i + chunk]:
                if isinstance(item, Envelope):
                    value, key = encode_envelope(item), item.device_id.encode()
                else:
                    value, key = item, b"garbage"
                futures.append(await producer.send(topic, value, key=key))
            for meta in await asyncio.gather(*futures):
                ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
            if pause_s:
                await asyncio.sleep(pause_s)
    finally:
        await producer.stop()
    return ends


async def stored_offsets(dsn: str, topic: str) -> dict[int, int]:
    """The offsets the store holds for ``topic`` (empty if the store is down)."""
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError):
        return {}
    try:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
            group_for(topic),
            topic,
        )
    finally:
        await conn.close()
    return {int(r["partition"]): int(r["next_offset"]) for r in rows}


async def applied_records(dsn: str, topic: str) -> int:
    """How many records of ``topic`` the store has applied (0 while it is down)."""
    return sum((await stored_offsets(dsn, topic)).values())


async def wait_applied(dsn: str, topic: str, ends: dict[int, int], within_s: float = 90.0) -> None:
    """Wait until the store's offsets reach ``ends`` (everything produced has been applied)."""

    async def done() -> bool:
        stored = await stored_offsets(dsn, topic)
        return all(stored.get(p, 0) >= end for p, end in ends.items())

    await eventually(done, within_s, every_s=0.2)


def consumer_env(
    *, dsn: str, bootstrap: str, topics: KafkaTopics, consumer_id: str, **extra: str
) -> dict[str, str]:
    """Environment of a ``cityingest consume`` process for the test services and ``topics`` (the test
    process's environment without its CITYINGEST_* settings, plus these)."""
    env = project_env()
    env.update(
        {
            "CITYINGEST_DATABASE_URL": dsn,
            "CITYINGEST_KAFKA_BOOTSTRAP": bootstrap,
            "CITYINGEST_READINGS_TOPIC": topics.readings,
            "CITYINGEST_DLQ_TOPIC": topics.dlq,
            "CITYINGEST_GROUP_ID": group_for(topics.readings),
            "CITYINGEST_CONSUMER_ID": consumer_id,
            "CITYINGEST_KAFKA_IDEMPOTENCE": "false",
            "CITYINGEST_HTTP_PORT": "0",
            "CITYINGEST_RETENTION_DAYS": "100000",  # the generated streams are from 2024
            "CITYINGEST_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "CITYINGEST_LOG_LEVEL": "INFO",
        }
    )
    env.update({f"CITYINGEST_{k.upper()}": v for k, v in extra.items()})
    return env


CONSUME_COMMAND: tuple[str, ...] = (sys.executable, "-m", "cli", "consume")
"""``cityingest consume``, the command docker-compose.yml and deploy/k8s run (their flags are settings)."""


class ConsumerProcess:
    """A ``cityingest consume`` child process (as compose and Kubernetes run it) with its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (logs appended to ``log_path``)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(CONSUME_COMMAND, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crash or an OOM kill."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for a clean exit; return the exit status."""
        if self.proc is None:
            return 0
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.proc = None
        return code

    def exit_code(self) -> int | None:
        """The exit status once the process has exited; None while it runs (or before it starts)."""
        return None if self.proc is None else self.proc.poll()

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def project_env() -> dict[str, str]:
    """The test process's environment without CITYINGEST_* leftovers."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CITYINGEST_")}


async def read_log(bootstrap: str, topic: str, ends: dict[int, int]) -> list[bytes]:
    """Every record value of ``topic`` up to ``ends``, partition by partition in offset order.

    This is the order the consumer applies: "the first occurrence wins" means first in the log, which is
    not always the order the test sent in (a producer without idempotence may reorder on retry).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    try:
        for partition, end in sorted(ends.items()):
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                values += [m.value for m in batch.get(tp, []) if m.offset < end and m.value is not None]
    finally:
        await consumer.stop()
    return values
