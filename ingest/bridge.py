"""The bridge runtime: MQTT messages in, validated envelopes and dead letters out to Kafka.

At-least-once: an MQTT message is acknowledged to the broker only after Kafka acknowledged (``acks=all``)
every record made from it, the envelope of its valid readings and its dead letter if any. Acks go out
in the order the messages arrived. A Kafka failure is retried with capped exponential backoff for as long as
the message's MQTT connection lives (after a reconnect the broker redelivers it anyway); meanwhile the
unacknowledged messages fill the in-flight window, the broker stops sending (Receive Maximum) and the bridge
reports itself not ready. The bytes of the records of unacknowledged messages are bounded too
(``max_in_flight_bytes``): above it the bridge stops reading MQTT until acks bring them back under, so
large messages cannot fill its memory. Retries and redeliveries may duplicate a record in Kafka, never
lose one, and a retried record may land after newer records of the same device.

No message can stop the others: one the bridge fails on unexpectedly is dead-lettered as ``internal_error``
(raw payload kept) and acknowledged like any other. Whatever the cause, messages that wait while no ack goes
out for ``ack_stall_s`` make the bridge report itself not ready. A delivery with the retain flag is a
broker's stored copy, not a new message (see :mod:`ingest.mqtt`): it is dead-lettered as ``retained``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from typing import Final, Self

import paho.mqtt.client as paho
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from core.catalogue import Catalogue, load_catalogue
from ingest.http import HealthServer
from ingest.kafka import RETRY_BACKOFF_MAX_S, kafka_reachable, start_producer
from ingest.memory import fix_mmap_threshold
from ingest.metrics import CONTENT_TYPE, BridgeStats, build_registry, render
from ingest.mqtt import MqttSource
from ingest.parse import PayloadParser
from ingest.records import Record, RecordMaker
from ingest.settings import BridgeSettings

log = logging.getLogger(__name__)

_PROBE_INTERVAL_S: Final = 2.0
_DRAIN_TIMEOUT_S: Final = 10.0


class _Message:
    """An MQTT message on its way: acknowledged once ``outstanding`` records reached Kafka."""

    __slots__ = ("abandoned", "generation", "mid", "nbytes", "outstanding", "qos", "records")

    def __init__(self, mid: int, qos: int, generation: int, records: list[Record]) -> None:
        self.mid, self.qos, self.generation, self.records = mid, qos, generation, records
        self.outstanding = len(records)
        self.abandoned = False
        # What the message keeps in memory until it is acknowledged: envelopes and dead letters alike.
        self.nbytes = sum(len(r.value) + len(r.key or b"") for r in records)


class Bridge:
    """One bridge process's worth of work; ``async with Bridge(settings)`` or ``start()``/``stop()``."""

    def __init__(self, settings: BridgeSettings, *, catalogue: Catalogue | None = None) -> None:
        self.settings = settings
        self.stats = BridgeStats()
        self._catalogue = catalogue
        self._maker: RecordMaker | None = None
        self._producer: AIOKafkaProducer | None = None
        self._mqtt: MqttSource | None = None
        self._pending: deque[_Message] = deque()
        self._queue: deque[_Message] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._failing = 0
        self._progress_at = time.monotonic()
        """When acks last advanced, or messages started to wait after none did (the stall detector)."""
        self._kafka_reachable = False
        self._paused = False
        self._in_flight_bytes = 0
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._retries: dict[asyncio.TimerHandle, tuple[_Message, Record]] = {}
        self._resends: set[asyncio.Task[None]] = set()
        self._registry = build_registry(
            self.stats,
            lambda: len(self._pending),
            lambda: not self.not_ready_reasons(),
            lambda: self._in_flight_bytes,
        )
        self._http = HealthServer(
            settings.http_host,
            settings.http_port,
            metrics=lambda: (render(self._registry), CONTENT_TYPE),
            not_ready_reasons=self.not_ready_reasons,
            healthy=self._healthy,
        )

    @property
    def http_port(self) -> int:
        """The port of /metrics, /healthz and /readyz."""
        return self._http.port

    def _healthy(self) -> bool:
        task = self._run_task
        return self._stopping or task is None or not task.done()

    @property
    def in_flight(self) -> int:
        """MQTT messages received and not yet acknowledged (or given up after a reconnect)."""
        return len(self._pending)

    @property
    def in_flight_bytes(self) -> int:
        """Bytes of the Kafka records of the messages in flight (bounded by ``max_in_flight_bytes``)."""
        return self._in_flight_bytes

    @property
    def intake_paused(self) -> bool:
        """Whether the bridge stopped reading MQTT because its message window or byte budget is full."""
        return self._paused

    def not_ready_reasons(self) -> list[str]:
        """Why the bridge does not take traffic now; empty when it is ready."""
        reasons: list[str] = []
        if self._stopping:
            reasons.append("stopping")
        if self._producer is None:
            reasons.append("kafka: not connected yet")
        elif not self._kafka_reachable:
            reasons.append("kafka: unreachable")
        if self._failing:
            reasons.append(f"kafka: {self._failing} records waiting to be retried")
        if self._pending:
            # Whatever the cause (Kafka, a bug, a wedged loop), messages that wait without acks moving on
            # hold up every device behind them: say so, so the orchestrator can act.
            stalled_s = time.monotonic() - self._progress_at
            if stalled_s > self.settings.ack_stall_s:
                reasons.append(
                    f"acks: stalled for {stalled_s:.0f} s with {len(self._pending)} messages waiting"
                )
        if self._mqtt is None or not self._mqtt.connected:
            reasons.append("mqtt: not connected")
        elif not self._mqtt.subscribed:
            reasons.append("mqtt: not subscribed")
        return reasons

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the HTTP endpoints, then connect to Kafka and MQTT in the background."""
        s = self.settings
        catalogue = self._catalogue or load_catalogue(s.catalogue_file)
        parser = PayloadParser(
            catalogue,
            bridge_id=s.bridge_id,
            topic_prefix=s.mqtt_topic_prefix,
            domains=s.domains,
            max_payload_bytes=s.max_payload_bytes,
            max_future_skew_s=s.max_future_skew_s,
        )
        self._maker = RecordMaker(
            parser,
            bridge_id=s.bridge_id,
            readings_topic=s.readings_topic,
            dlq_topic=s.dlq_topic,
            max_payload_bytes=s.max_payload_bytes,
            rejected=self.stats.rejected,
        )
        await self._http.start()
        self._run_task = asyncio.create_task(self._run(), name=f"bridge-{s.bridge_id}")

    async def wait(self) -> None:
        """Wait until the bridge stops; re-raise what made it fail."""
        if self._run_task is not None:
            await self._run_task

    async def stop(self) -> None:
        """Drain in-flight messages (bounded), disconnect and release everything. Idempotent."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        self._stopping = True
        if self._mqtt is not None:
            self._mqtt.pause()
            # Let what Kafka can still take be acknowledged; the broker redelivers the rest later.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_DRAIN_TIMEOUT_S):
                    await self._idle.wait()
            await self._mqtt.close()
        for handle in self._retries:
            handle.cancel()
        tasks = [t for t in (self._run_task, *self._resends) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._producer is not None:
            with contextlib.suppress(TimeoutError, KafkaError):
                async with asyncio.timeout(_DRAIN_TIMEOUT_S):
                    await self._producer.stop()
        await self._http.stop()
        log.info("bridge %s stopped", self.settings.bridge_id)

    # --- main loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        self._producer = producer = await start_producer(self.settings)
        self._kafka_reachable = True
        self._mqtt = MqttSource(self.settings, self._on_message, self.stats)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._send_loop(producer), name="bridge-sender")
            group.create_task(self._probe_loop(producer), name="bridge-kafka-probe")
            group.create_task(self._mqtt.run(), name="bridge-mqtt")

    async def _probe_loop(self, producer: AIOKafkaProducer) -> None:
        while True:
            await asyncio.sleep(_PROBE_INTERVAL_S)
            reachable = await kafka_reachable(producer)
            if reachable != self._kafka_reachable:
                log.log(logging.INFO if reachable else logging.WARNING, "Kafka reachable: %s", reachable)
            self._kafka_reachable = reachable

    # --- MQTT message -> Kafka records ---------------------------------------------------------

    def _on_message(self, message: paho.MQTTMessage, generation: int) -> None:
        received_us = time.time_ns() // 1_000
        maker = self._maker
        if maker is None:  # unreachable: MQTT connects after start() built the maker
            raise RuntimeError("bridge not started")
        self.stats.messages_received += 1
        records = self._records(maker, message, received_us)
        msg = _Message(message.mid, message.qos, generation, records)
        if not self._pending:
            self._progress_at = time.monotonic()
        self._pending.append(msg)
        self._queue.append(msg)
        self._idle.clear()
        self._wake.set()
        self._hold_if_full(msg)

    def _hold_if_full(self, msg: _Message) -> None:
        """Count the message's bytes; stop reading MQTT when the window or the byte budget is full."""
        self._in_flight_bytes += msg.nbytes
        self.stats.in_flight_bytes_peak = max(self.stats.in_flight_bytes_peak, self._in_flight_bytes)
        # The broker keeps to Receive Maximum, so the count only trips for a broker that does not, or
        # when messages of a lost connection still wait for Kafka next to the redelivered ones. The bytes
        # trip for large messages (a 256 KiB payload, a dead letter carrying it): checked after taking
        # the message, so one larger than the whole budget still passes and holds at most budget + 1.
        s = self.settings
        if self._mqtt is not None and (
            len(self._pending) >= 2 * s.max_in_flight or self._in_flight_bytes > s.max_in_flight_bytes
        ):
            if not self._paused:
                self.stats.intake_pauses += 1
            self._paused = True
            self._mqtt.pause()  # also after a reconnect, which resumed reading on its new socket

    def _records(self, maker: RecordMaker, message: paho.MQTTMessage, received_us: int) -> list[Record]:
        """The records of one message. Never raises: whatever fails is dead-lettered as internal_error, so
        the message is acknowledged like any other and never blocks the ones behind it."""
        topic, raw = "", b""
        try:
            raw = bytes(message.payload)
            try:
                topic = message.topic
            except UnicodeDecodeError:  # brokers refuse such topics; never trust that
                topic = message._topic.decode("utf-8", "replace")
            if message.retain:
                return [maker.retained(topic, raw, received_us)]
            return maker.records(raw, topic, received_us)
        except Exception as exc:
            log.exception("handling a message from %r failed; dead-lettering it as internal_error", topic)
            return [maker.internal_error(exc, topic, raw, received_us)]

    # --- Kafka sends, retries and in-order acks -------------------------------------------------

    async def _send_loop(self, producer: AIOKafkaProducer) -> None:
        queue = self._queue
        while True:
            while not queue:
                self._wake.clear()
                await self._wake.wait()
            msg = queue.popleft()
            for record in msg.records:
                await self._send(producer, msg, record)
            if not msg.records:  # nothing to write (cannot happen today, but never block the acks)
                self._advance_acks()

    async def _send(self, producer: AIOKafkaProducer, msg: _Message, record: Record) -> None:
        try:
            future = await producer.send(record.topic, record.value, key=record.key)
        except KafkaError as exc:
            self._failed(msg, record, exc)
            return
        future.add_done_callback(functools.partial(self._delivered, msg, record))

    def _delivered(self, msg: _Message, record: Record, future: asyncio.Future[object]) -> None:
        exc = KafkaError("send cancelled") if future.cancelled() else future.exception()
        if exc is not None:
            self._failed(msg, record, exc)
            return
        if record.failed:
            record.failed = False
            self._failing -= 1
            if self._failing == 0:
                log.info("Kafka takes records again")
            else:
                # Kafka is back: the other failed records need not sit out the rest of their backoff
                # (up to 30 s after an outage), they go again now.
                self._retry_all_now()
        if record.readings:
            self.stats.readings_forwarded += record.readings
            self.stats.records_forwarded += 1
        else:
            self.stats.dead_letters_written += 1
        self._record_done(msg)

    def _record_done(self, msg: _Message) -> None:
        msg.outstanding -= 1
        if msg.outstanding == 0:
            self._advance_acks()

    def _stale(self, msg: _Message) -> bool:
        return self._stopping or self._mqtt is None or msg.generation != self._mqtt.generation

    def _failed(self, msg: _Message, record: Record, exc: BaseException) -> None:
        self.stats.kafka_errors += 1
        if not record.failed:
            record.failed = True
            self._failing += 1
            if self._failing == 1:
                log.warning(
                    "Kafka did not take a record for %s: %r; retrying with backoff", record.topic, exc
                )
        if self._stale(msg):
            self._abandon(msg, record)
            return
        delay = min(self.settings.kafka_retry_backoff_s * 2**record.attempts, RETRY_BACKOFF_MAX_S)
        record.attempts += 1
        handle = asyncio.get_running_loop().call_later(delay, self._retry, msg, record)
        self._retries[handle] = (msg, record)

    def _retry_all_now(self) -> None:
        loop = asyncio.get_running_loop()
        waiting = [item for handle, item in self._retries.items() if not handle.cancelled()]
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
        for msg, record in waiting:
            loop.call_soon(self._retry, msg, record)

    def _abandon(self, msg: _Message, record: Record) -> None:
        # The MQTT connection that delivered the message is gone: the broker redelivers it, unacknowledged.
        if record.failed:
            record.failed = False
            self._failing -= 1
        msg.abandoned = True
        self._record_done(msg)

    def _retry(self, msg: _Message, record: Record) -> None:
        now = asyncio.get_running_loop().time()
        self._retries = {h: v for h, v in self._retries.items() if not h.cancelled() and h.when() > now}
        if self._stale(msg):
            self._abandon(msg, record)
            return
        if self._producer is None:
            return
        self.stats.kafka_retries += 1
        task = asyncio.create_task(self._send(self._producer, msg, record))
        self._resends.add(task)
        task.add_done_callback(self._resends.discard)

    def _advance_acks(self) -> None:
        pending = self._pending
        mqtt = self._mqtt
        if pending and pending[0].outstanding == 0:
            self._progress_at = time.monotonic()
        while pending and pending[0].outstanding == 0:
            msg = pending.popleft()
            self._in_flight_bytes -= msg.nbytes
            if (
                not msg.abandoned
                and msg.qos
                and mqtt is not None
                and mqtt.ack(msg.mid, msg.qos, msg.generation)
            ):
                self.stats.messages_acked += 1
        if not pending:
            self._idle.set()
        if (
            self._paused
            and not self._stopping
            and len(pending) <= self.settings.max_in_flight
            and self._in_flight_bytes <= self.settings.max_in_flight_bytes
        ):
            self._paused = False
            if mqtt is not None:
                mqtt.resume()


async def serve(settings: BridgeSettings) -> None:
    """Run a bridge until cancelled (or until it fails), then drain and shut it down gracefully."""
    fix_mmap_threshold()  # the bridge owns this process: keep its large buffers from fragmenting the heap
    bridge = Bridge(settings)
    await bridge.start()
    try:
        await bridge.wait()
    finally:
        stopping = asyncio.ensure_future(bridge.stop())
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            await stopping
            raise
