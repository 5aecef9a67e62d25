"""The Kafka -> TimescaleDB consumer: batches from a consumer group, applied exactly once to the store.

The store holds the offsets (``consumer_offsets``), written in the transaction of the batch they
belong to; on partition assignment the consumer seeks to them (``consumers/rebalance.py``). Kafka
commits are made afterwards only for lag tools. Undecodable records and unstorable readings go to the
dead-letter topic; while the database is unavailable (however its connections were lost, see
``consumers/storeerrors.py``) the consumer pauses its partitions, reports not ready, and retries the same
batch with backoff (``consumers/shards.py``). Anything else, in the consume loop or any task beside it,
fails the consumer: it is logged, ``/healthz`` answers 503 and :meth:`Consumer.wait` raises it, so the
process exits non-zero and its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from prometheus_client import CONTENT_TYPE_LATEST

from consumers.clients import create_store_pool, dead_letter_producer, group_member
from consumers.fetch import BatchFetcher
from consumers.maintenance import retention_loop
from consumers.metrics import ConsumerMetrics
from consumers.rebalance import Assignment
from consumers.settings import ConsumerSettings
from consumers.shards import ShardApplier
from consumers.storeerrors import describe
from consumers.storehealth import StoreHealth
from core.catalogue import load_catalogue
from core.errors import BrokerUnavailable
from core.lifecycle import State, check_state
from core.runtime import ProbeServer

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT_S = 10.0
_POOL_CLOSE_TIMEOUT_S = 5.0


def _first_error(exc: BaseException) -> BaseException:
    """The first error a task group collected (groups nest: a batch's shards run in one too)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class Consumer:
    """One consumer process of the group: ``async with Consumer(settings) as c: await c.wait()``."""

    def __init__(self, settings: ConsumerSettings) -> None:
        self.settings = settings
        self.metrics = ConsumerMetrics()
        self._counters = sorted(load_catalogue(settings.catalogue_file).counters())
        self._state = State.NEW
        self._error: BaseException | None = None
        self._failed = asyncio.Event()
        """Set by :meth:`_fail`: a failure outside the consumer's tasks (a rebalance callback) ends them."""
        self._probe = ProbeServer(
            f"consumer {settings.consumer_id}",
            settings.http_host,
            settings.http_port,
            metrics=lambda: (self.metrics.render(), CONTENT_TYPE_LATEST),
            not_ready_reasons=self.not_ready_reasons,
            healthy=lambda: self._state is not State.FAILED,
        )
        self._pool: asyncpg.Pool | None = None
        self._kafka: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._store: StoreHealth | None = None
        self._assignment: Assignment | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def state(self) -> State:
        """Where the consumer is in its lifecycle."""
        return self._state

    @property
    def http_port(self) -> int:
        """Port of /metrics /healthz /readyz."""
        check_state("consumer", self._state, State.RUNNING, State.FAILED, State.STOPPING)
        return self._probe.port

    @property
    def assigned_partitions(self) -> frozenset[TopicPartition]:
        """The partitions this consumer owns now (sought to their stored offsets)."""
        return frozenset(self._assignment.assigned) if self._assignment is not None else frozenset()

    def not_ready_reasons(self) -> list[str]:
        """Why the consumer does not take its share of the work now; empty while it does."""
        reasons: list[str] = []
        if self._state is State.FAILED:
            reasons.append(f"failed: {describe(self._error) if self._error else 'unknown error'}")
        elif self._state is not State.RUNNING:
            reasons.append(self._state.value)
        if self._store is None:
            reasons.append("store: not connected yet")
        elif not self._store.ok:
            reasons.append(f"store: unavailable: {self._store.error}")
        return reasons

    async def start(self) -> None:
        """Connect to the store and Kafka, join the group and start consuming; refused unless new."""
        check_state("consumer", self._state, State.NEW)
        self._state = State.STARTING
        s = self.settings
        try:
            self._pool = pool = await create_store_pool(s)
            await self._probe.start()
            self._producer = producer = dead_letter_producer(s)
            self._kafka = kafka = group_member(s)
            self._store = store = StoreHealth(self.metrics, kafka, s.db_retry_max_s)
            self._assignment = assignment = Assignment(
                s, kafka=kafka, pool=pool, store=store, metrics=self.metrics, idle=self._idle, fail=self._fail
            )
            shards = ShardApplier(
                s, pool=pool, producer=producer, assignment=assignment, store=store, metrics=self.metrics,
                counters=self._counters,
            )  # fmt: skip
            kafka.subscribe([s.readings_topic], listener=assignment)
            try:
                await producer.start()
                await kafka.start()
            except KafkaConnectionError as exc:
                raise BrokerUnavailable(f"cannot reach Kafka at {s.kafka_bootstrap}: {exc}") from exc
        except BaseException as exc:
            self._state = State.FAILED
            self._error = exc
            self._stop_task = asyncio.ensure_future(self._close())  # stop() then waits for this one
            await asyncio.shield(self._stop_task)
            raise
        if self._state is State.STARTING:
            self._state = State.RUNNING
        # Coroutine functions, not coroutines: a consumer stopped before its tasks ran leaves none unawaited.
        self._supervisor = asyncio.create_task(
            self._supervise(
                ("consumer-run", functools.partial(self._run, kafka, pool, assignment, shards)),
                (
                    "consumer-retention",
                    functools.partial(
                        retention_loop, pool, s.retention_days, s.maintenance_interval_s, self.metrics
                    ),
                ),
                ("consumer-kafka-commit", assignment.commit_loop),
                ("consumer-failed", self._failed_elsewhere),
            ),
            name=f"consumer-{s.consumer_id}",
        )
        log.info("consumer %s started in group %s on %s", s.consumer_id, s.group_id, s.readings_topic)

    async def wait(self) -> None:
        """Run until stopped or cancelled; raise what made the consumer fail."""
        check_state("consumer", self._state, State.RUNNING, State.STOPPING, State.STOPPED, State.FAILED)
        if self._supervisor is None:  # failed during start()
            raise self._error or RuntimeError("the consumer failed to start")
        try:
            await asyncio.shield(self._supervisor)
        except asyncio.CancelledError:
            if self._supervisor.cancelled() and self._state in (State.STOPPING, State.STOPPED):
                return  # stopped by stop(), not a failure
            raise

    async def stop(self) -> None:
        """Leave the group and close every connection; an unfinished batch is rolled back.

        Idempotent, and safe to cancel: the cleanup goes on, shielded, and whatever cannot be closed
        cleanly is terminated.
        """
        if self._stop_task is None:
            if self._state is not State.FAILED:
                self._state = State.STOPPING
            self._stop_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._stop_task)

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- supervision --------------------------------------------------------------------------------

    async def _supervise(self, *tasks: tuple[str, Callable[[], Coroutine[Any, Any, None]]]) -> None:
        """Run the consumer's tasks in one task group: the first to fail fails the consumer."""
        error: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as group:
                for name, run in tasks:
                    group.create_task(run(), name=name)
        except BaseExceptionGroup as errors:
            error = _first_error(errors)
        if error is not None:
            # Raised outside the handler, so that it carries its own cause, not the group.
            self._fail(error)
            raise error

    def _fail(self, exc: BaseException) -> None:
        """Fail the consumer with ``exc`` (once): log it, report unhealthy, end its tasks."""
        if self._state not in (State.STARTING, State.RUNNING):
            return
        self._state = State.FAILED
        self._error = exc
        log.critical(
            "consumer %s failed, exiting: %s", self.settings.consumer_id, describe(exc), exc_info=exc
        )
        self._failed.set()

    async def _failed_elsewhere(self) -> None:
        await self._failed.wait()
        raise self._error or RuntimeError("the consumer failed")

    async def _close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(BaseException):
                await self._supervisor
        for closer in (
            self._kafka.stop if self._kafka else None,
            self._producer.stop if self._producer else None,
            self._probe.stop,
        ):
            if closer is not None:
                try:
                    await asyncio.wait_for(closer(), _CLOSE_TIMEOUT_S)
                except Exception:
                    log.warning("error while stopping the consumer", exc_info=True)
        try:
            if self._pool is not None:
                await asyncio.wait_for(self._pool.close(), _POOL_CLOSE_TIMEOUT_S)
        except BaseException as exc:
            # Whatever a lost connection (or a cancellation) makes close() raise, nothing may stay
            # half-closed.
            log.warning("closing the store's connections failed; terminating them", exc_info=True)
            if self._pool is not None:
                self._pool.terminate()
            if not isinstance(exc, Exception):
                raise
        finally:
            if self._state is not State.FAILED:
                self._state = State.STOPPED
        log.info("consumer %s stopped", self.settings.consumer_id)

    # -- the consume loop -------------------------------------------------------------------------

    async def _run(
        self, kafka: AIOKafkaConsumer, pool: asyncpg.Pool, owned: Assignment, shards: ShardApplier
    ) -> None:
        # Two-stage pipeline: batch N+1 is fetched and decoded while batch N is applied; N always
        # commits before N+1 starts, so a failed batch can never be overtaken by the next one.
        fetcher = BatchFetcher(self.settings, lambda: owned.generation)
        store = self._store
        if store is None:  # pragma: no cover - started before the run
            raise RuntimeError("the consumer is not started")
        pending: asyncio.Task[None] | None = None
        try:
            while True:
                records = await fetcher.fetch(kafka)
                generation = owned.generation
                # Plain tuples hash and compare like TopicPartition and cost less to build.
                records = [r for r in records if (r.topic, r.partition) in owned.assigned]
                # Decoding is CPU work: in a thread, so that the event loop keeps feeding the
                # database the batch in flight meanwhile.
                prepared = await asyncio.to_thread(shards.prepare, records) if records else []
                if pending is not None:
                    await pending
                    pending = None
                if prepared:
                    self._idle.clear()
                    pending = asyncio.create_task(shards.apply(prepared, len(records), generation))
                    pending.add_done_callback(lambda _: self._idle.set())
                elif not store.ok:
                    await store.ping(pool)
                owned.update_lag()
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)


async def serve(settings: ConsumerSettings) -> None:
    """Run a consumer until cancelled (the CLI cancels on SIGINT/SIGTERM), then stop it cleanly."""
    async with Consumer(settings) as consumer:
        await consumer.wait()
