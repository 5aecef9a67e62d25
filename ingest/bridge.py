"""The bridge runtime: MQTT messages in, validated envelopes and dead letters out to Kafka.

At-least-once: an MQTT message is acknowledged to the broker only after Kafka acknowledged (``acks=all``)
every record made from it, the envelope of its valid readings and its dead letter if any. Acks go out in the
order the messages arrived (the bookkeeping is :mod:`ingest.sender`). A retriable Kafka failure is retried
with capped exponential backoff for as long as the message's MQTT connection lives (after a reconnect the
broker redelivers it anyway); meanwhile the unacknowledged messages fill the in-flight window, the broker
stops sending (Receive Maximum) and the bridge reports itself not ready. The bytes of the records of
unacknowledged messages are bounded too (``max_in_flight_bytes``): above it the bridge stops reading MQTT
until acks bring them back under, so large messages cannot fill its memory. Retries and redeliveries may
duplicate a record in Kafka, never lose one, and a retried record may land after newer records of the same
device.

No message can stop the others: one the bridge fails on unexpectedly is dead-lettered as ``internal_error``
(raw payload kept) and acknowledged like any other. Whatever the cause, messages that wait while no ack goes
out for ``ack_stall_s`` make the bridge report itself not ready. A delivery with the retain flag is a
broker's stored copy, not a new message (see :mod:`ingest.mqtt`): it is dead-lettered as ``retained``. A
record Kafka refuses for good as too large is dead-lettered as ``record_too_large``.

Nothing dies unnoticed: the sender, the Kafka probe and the MQTT connection run in one task group; when any
of them fails (or Kafka refuses the bridge for good: authorization, configuration, protocol), the bridge is
failed: it logs why, ``/healthz`` answers 503, ``/readyz`` is not ready, and :meth:`Bridge.wait` and
:func:`serve` raise, so ``cityingest bridge`` exits non-zero and its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final, Self

import paho.mqtt.client as paho
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from core.catalogue import Catalogue, load_catalogue
from core.lifecycle import State, StateError
from core.runtime import ProbeServer
from ingest.kafka import kafka_reachable, start_producer
from ingest.memory import fix_mmap_threshold
from ingest.metrics import CONTENT_TYPE, BridgeStats, build_registry, render
from ingest.mqtt import MqttSource
from ingest.parse import PayloadParser
from ingest.records import RecordMaker
from ingest.sender import KafkaSender, Message
from ingest.settings import BridgeSettings

log = logging.getLogger(__name__)

_PROBE_INTERVAL_S: Final = 2.0
_DRAIN_TIMEOUT_S: Final = 10.0


class Bridge:
    """One bridge process's worth of work; ``async with Bridge(settings)`` or ``start()``/``stop()``."""

    def __init__(self, settings: BridgeSettings, *, catalogue: Catalogue | None = None) -> None:
        self.settings = s = settings
        self.stats = BridgeStats()
        self._state = State.NEW
        self._failure: BaseException | None = None
        parser = PayloadParser(
            catalogue or load_catalogue(s.catalogue_file),
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
        self._producer: AIOKafkaProducer | None = None
        self._mqtt: MqttSource | None = None
        self._sender: KafkaSender | None = None
        self._kafka_reachable = False
        self._stop_task: asyncio.Task[None] | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._cut_drain = asyncio.Event()
        registry = build_registry(
            self.stats,
            lambda: self.in_flight,
            lambda: not self.not_ready_reasons(),
            lambda: self.in_flight_bytes,
        )
        self._probes = ProbeServer(
            "bridge",
            s.http_host,
            s.http_port,
            metrics=lambda: (render(registry), CONTENT_TYPE),
            not_ready_reasons=self.not_ready_reasons,
            healthy=self._healthy,
        )

    @property
    def state(self) -> State:
        """The bridge's lifecycle state."""
        return self._state

    @property
    def http_port(self) -> int:
        """The port of /metrics, /healthz and /readyz."""
        return self._probes.port

    def _healthy(self) -> bool:
        return self._failure is None

    @property
    def in_flight(self) -> int:
        """MQTT messages received and not yet acknowledged (or given up after a reconnect)."""
        return 0 if self._sender is None else len(self._sender.pending)

    @property
    def in_flight_bytes(self) -> int:
        """Bytes of the Kafka records of the messages in flight (bounded by ``max_in_flight_bytes``)."""
        return 0 if self._sender is None else self._sender.in_flight_bytes

    @property
    def intake_paused(self) -> bool:
        """Whether the bridge stopped reading MQTT because its message window or byte budget is full."""
        return self._sender is not None and self._sender.paused

    def not_ready_reasons(self) -> list[str]:
        """Why the bridge does not take traffic now; empty when it is ready."""
        reasons: list[str] = []
        if self._failure is not None:
            reasons.append(f"failed: {self._failure!r}")
        if self._state in (State.STOPPING, State.STOPPED):
            reasons.append("stopping")
        sender = self._sender
        if self._producer is None:
            reasons.append("kafka: not connected yet")
        elif not self._kafka_reachable:
            reasons.append("kafka: unreachable")
        if sender is not None and sender.failing:
            reasons.append(f"kafka: {sender.failing} records waiting to be retried")
        if sender is not None and sender.pending:
            # Whatever the cause (Kafka, a bug, a wedged loop), messages that wait without acks moving on
            # hold up every device behind them: say so, so the orchestrator can act.
            stalled_s = time.monotonic() - sender.progress_at
            if stalled_s > self.settings.ack_stall_s:
                reasons.append(
                    f"acks: stalled for {stalled_s:.0f} s with {len(sender.pending)} messages waiting"
                )
        if self._mqtt is None or not self._mqtt.connected:
            refusal = None if self._mqtt is None else self._mqtt.refusal
            reasons.append(
                "mqtt: not connected" if refusal is None else f"mqtt: refused by the broker: {refusal}"
            )
        elif not self._mqtt.subscribed:
            reasons.append("mqtt: not subscribed")
        return reasons

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the HTTP endpoints, then connect to Kafka and MQTT in the background. Only once."""
        if self._state is not State.NEW:
            raise StateError(f"bridge {self.settings.bridge_id} cannot start: it is {self._state.value}")
        self._state = State.STARTING
        try:
            self._mqtt = MqttSource(self.settings, self._on_message, self.stats)
            await self._probes.start()
        except BaseException as exc:
            self._failure = exc
            self._state = State.FAILED
            raise
        self._run_task = asyncio.create_task(self._run(), name=f"bridge-{self.settings.bridge_id}")
        self._state = State.RUNNING

    async def wait(self) -> None:
        """Wait until the bridge stops; re-raise what made it fail."""
        if self._state is State.NEW:
            raise StateError(f"bridge {self.settings.bridge_id} was not started")
        task = self._run_task
        if task is not None:
            await asyncio.wait({task})  # the caller's cancellation propagates, the task's does not
            if not task.cancelled():
                task.result()

    async def stop(self) -> None:
        """Drain in-flight messages (bounded), disconnect and release everything. Idempotent; when the
        caller is cancelled meanwhile, the drain is cut short and everything is still released."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())
        task = self._stop_task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            self._cut_drain.set()
            while not task.done():  # release everything before the cancellation goes on
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(task)
            raise

    async def _stop(self) -> None:
        if self._state is not State.FAILED:
            self._state = State.STOPPING
        try:
            await self._disconnect()
        finally:
            try:  # whatever failed above, nothing is left open
                with contextlib.suppress(TimeoutError, KafkaError):
                    if self._producer is not None:
                        async with asyncio.timeout(_DRAIN_TIMEOUT_S):
                            await self._producer.stop()
            finally:
                await self._probes.stop()
                if self._state is not State.FAILED:
                    self._state = State.STOPPED
                log.info("bridge %s stopped", self.settings.bridge_id)

    async def _disconnect(self) -> None:
        """Let Kafka take what it can (bounded), close MQTT, then end the run task."""
        sender, mqtt = self._sender, self._mqtt
        try:
            if mqtt is not None:
                mqtt.pause()
                if sender is not None and self._failure is None:
                    sender.stopping = True
                    # Let what Kafka can still take be acknowledged; the broker redelivers the rest later.
                    idle, cut = (
                        asyncio.ensure_future(sender.idle.wait()),
                        asyncio.ensure_future(self._cut_drain.wait()),
                    )
                    await asyncio.wait(
                        {idle, cut}, timeout=_DRAIN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
                    )
                    idle.cancel()
                    cut.cancel()
                await mqtt.close()
        finally:
            if sender is not None:
                sender.stopping = True
                sender.cancel_retries()
            task = self._run_task
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):  # a failure was recorded and logged by _run
                    await task

    # --- main loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        mqtt = self._mqtt
        if mqtt is None:  # unreachable: start() built it
            raise RuntimeError("bridge not started")
        try:
            self._producer = producer = await start_producer(self.settings)
            self._kafka_reachable = True
            self._sender = sender = KafkaSender(self.settings, self.stats, producer, mqtt, self._maker)
            async with asyncio.TaskGroup() as group:
                group.create_task(sender.run(), name="bridge-sender")
                group.create_task(self._probe_loop(producer), name="bridge-kafka-probe")
                group.create_task(mqtt.run(), name="bridge-mqtt")
        except asyncio.CancelledError:
            raise
        except BaseExceptionGroup as group_error:
            first: BaseException = group_error
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            self._fail(first)
            raise first from group_error
        except BaseException as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._state = State.FAILED
        log.error("bridge %s failed, restart it: %r", self.settings.bridge_id, exc, exc_info=exc)
        if self._mqtt is not None:
            self._mqtt.pause()  # take nothing more that could not be forwarded

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
        sender = self._sender
        if sender is None:  # unreachable: MQTT connects after the sender exists
            raise RuntimeError("bridge not started")
        self.stats.messages_received += 1
        topic, records = self._maker.of_message(message, received_us)
        sender.submit(Message(message.mid, message.qos, generation, topic, received_us, records))


async def serve(settings: BridgeSettings) -> None:
    """Run a bridge until cancelled (or until it fails: then raise), then drain and shut it down."""
    fix_mmap_threshold()  # the bridge owns this process: keep its large buffers from fragmenting the heap
    bridge = Bridge(settings)
    await bridge.start()
    try:
        await bridge.wait()
    finally:
        await bridge.stop()
