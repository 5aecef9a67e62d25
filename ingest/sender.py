"""Kafka sends, retries and in-order MQTT acks: the bridge's bookkeeping between its two brokers.

Each MQTT message becomes a :class:`Message` holding its records. The :class:`KafkaSender` sends them in
arrival order and acknowledges a message to MQTT once Kafka acknowledged (``acks=all``) every record of
it, messages in the order they arrived. What Kafka refuses is decided by the class of its error
(:func:`ingest.kafka.translate`): a retriable one is retried with :class:`core.runtime.Backoff` for as
long as the message's MQTT connection lives; a record refused for its size is dead-lettered as
``record_too_large`` so the acks behind it go on; any other refusal fails the sender, so the bridge.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from typing import Final, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from core.errors import BrokerRejectedRecord, BrokerUnavailable, CityIngestError
from core.runtime import Backoff
from ingest.kafka import RETRY_BACKOFF_MAX_S, max_request_bytes, translate
from ingest.metrics import BridgeStats
from ingest.records import Record, RecordMaker
from ingest.settings import BridgeSettings

log = logging.getLogger(__name__)

_REFUSED_SHARE: Final = 8
"""A refused record's dead letter keeps at most 1/8 of the request limit of it: JSON escaping and base64
at most quadruple it, which leaves room for the dead letter's other fields."""


class Message:
    """An MQTT message on its way: acknowledged once ``outstanding`` records reached Kafka."""

    __slots__ = (
        "abandoned",
        "generation",
        "mid",
        "nbytes",
        "outstanding",
        "qos",
        "received_us",
        "records",
        "topic",
    )

    def __init__(
        self, mid: int, qos: int, generation: int, topic: str, received_us: int, records: list[Record]
    ) -> None:
        self.mid, self.qos, self.generation, self.records = mid, qos, generation, records
        self.topic, self.received_us = topic, received_us
        self.outstanding = len(records)
        self.abandoned = False
        # What the message keeps in memory until it is acknowledged: envelopes and dead letters alike.
        self.nbytes = sum(len(r.value) + len(r.key or b"") for r in records)


class AckTarget(Protocol):
    """The MQTT side as the sender sees it (:class:`ingest.mqtt.MqttSource`)."""

    generation: int

    def ack(self, mid: int, qos: int, generation: int) -> bool:
        """Acknowledge a message on the connection that delivered it."""

    def pause(self) -> None:
        """Stop reading messages."""

    def resume(self) -> None:
        """Read messages again."""


class KafkaSender:
    """Sends the records of each submitted message, retries, dead-letters refused ones, acks in order."""

    def __init__(
        self,
        settings: BridgeSettings,
        stats: BridgeStats,
        producer: AIOKafkaProducer,
        mqtt: AckTarget,
        maker: RecordMaker,
    ) -> None:
        self._settings = settings
        self._stats = stats
        self._producer = producer
        self._mqtt = mqtt
        self._maker = maker
        self._refused_keep = max_request_bytes(settings) // _REFUSED_SHARE
        self.pending: deque[Message] = deque()
        """Messages received and not yet acknowledged, in arrival order."""
        self._queue: deque[Message] = deque()
        self._again: deque[tuple[Message, Record]] = deque()
        self._timers: dict[asyncio.TimerHandle, tuple[Message, Record]] = {}
        self._wake = asyncio.Event()
        self.idle = asyncio.Event()
        """Set while no message waits for Kafka."""
        self.idle.set()
        self.failing = 0
        """Records Kafka did not take and that wait to be retried."""
        self.progress_at = time.monotonic()
        """When acks last advanced, or messages started to wait after none did (the stall detector)."""
        self.paused = False
        self.in_flight_bytes = 0
        self.stopping = False
        self._fatal: CityIngestError | None = None

    def submit(self, msg: Message) -> None:
        """Queue a message's records for Kafka; stop reading MQTT when the window or byte budget is full."""
        if not self.pending:
            self.progress_at = time.monotonic()
        self.pending.append(msg)
        self._queue.append(msg)
        self.idle.clear()
        self._wake.set()
        self.in_flight_bytes += msg.nbytes
        self._stats.in_flight_bytes_peak = max(self._stats.in_flight_bytes_peak, self.in_flight_bytes)
        # The broker keeps to Receive Maximum, so the count only trips for a broker that does not, or
        # when messages of a lost connection still wait for Kafka next to the redelivered ones. The bytes
        # trip for large messages (a 256 KiB payload, a dead letter carrying it): checked after taking
        # the message, so one larger than the whole budget still passes and holds at most budget + 1.
        s = self._settings
        if len(self.pending) >= 2 * s.max_in_flight or self.in_flight_bytes > s.max_in_flight_bytes:
            if not self.paused:
                self._stats.intake_pauses += 1
            self.paused = True
            self._mqtt.pause()  # also after a reconnect, which resumed reading on its new socket

    async def run(self) -> None:
        """Send until cancelled; raise the first error that refuses the bridge for good."""
        queue, again = self._queue, self._again
        while True:
            while not queue and not again and self._fatal is None:
                self._wake.clear()
                await self._wake.wait()
            if self._fatal is not None:
                raise self._fatal
            if again:
                msg, record = again.popleft()
                if self._stale(msg):
                    self._abandon(msg, record)
                else:
                    await self._send(msg, record)
                continue
            msg = queue.popleft()
            for record in msg.records:
                await self._send(msg, record)
            if not msg.records:  # nothing to write (cannot happen today, but never block the acks)
                self._advance_acks()

    def cancel_retries(self) -> None:
        """Drop the scheduled retries (the bridge stops; the broker redelivers their messages)."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    async def _send(self, msg: Message, record: Record) -> None:
        try:
            future = await self._producer.send(record.topic, record.value, key=record.key)
        except KafkaError as exc:
            self._failed(msg, record, exc)
            return
        future.add_done_callback(functools.partial(self._delivered, msg, record))

    def _delivered(self, msg: Message, record: Record, future: asyncio.Future[object]) -> None:
        # A send is cancelled only when the producer stops: retriable, like any outage.
        exc = BrokerUnavailable("the send was cancelled") if future.cancelled() else future.exception()
        if exc is not None:
            self._failed(msg, record, exc)
            return
        if record.failed:
            record.failed = False
            self.failing -= 1
            if self.failing == 0:
                log.info("Kafka takes records again")
            else:
                # Kafka is back: the other failed records need not sit out the rest of their backoff
                # (up to 30 s after an outage), they go again now.
                self._retry_all_now()
        if record.readings:
            self._stats.readings_forwarded += record.readings
            self._stats.records_forwarded += 1
        else:
            self._stats.dead_letters_written += 1
        self._record_done(msg)

    def _record_done(self, msg: Message) -> None:
        msg.outstanding -= 1
        if msg.outstanding == 0:
            self._advance_acks()

    def _stale(self, msg: Message) -> bool:
        return self.stopping or msg.generation != self._mqtt.generation

    def _failed(self, msg: Message, record: Record, exc: BaseException) -> None:
        self._stats.kafka_errors += 1
        error = translate(exc)
        if record.failed and not error.retriable:
            record.failed = False
            self.failing -= 1
        if isinstance(error, BrokerRejectedRecord):
            self._refused(msg, record, error)
        elif not error.retriable:
            if self._fatal is None:
                log.error("Kafka refuses the bridge's records for %s: %s", record.topic, error)
                self._fatal = error
            self._wake.set()
        else:
            self._retry_later(msg, record, error)

    def _refused(self, msg: Message, record: Record, error: BrokerRejectedRecord) -> None:
        """Kafka will never take this record: dead-letter it with what fits, or, when that very dead
        letter is refused, log it and let the message go, so the acks behind it move on."""
        if record.refused_substitute:
            self._stats.messages_failed += 1
            log.error("Kafka refused the dead letter of a refused record from %r too (%s)", msg.topic, error)
            self._record_done(msg)
            return
        log.warning(
            "Kafka refused a %s-byte record for %s from %r for good (%s); dead-lettering it",
            len(record.value),
            record.topic,
            msg.topic,
            error,
        )
        letter = self._maker.refused(record, str(error), msg.topic, msg.received_us, self._refused_keep)
        self._again.append((msg, letter))
        self._wake.set()

    def _retry_later(self, msg: Message, record: Record, error: CityIngestError) -> None:
        if not record.failed:
            record.failed = True
            self.failing += 1
            if self.failing == 1:
                log.warning(
                    "Kafka did not take a record for %s: %s; retrying with backoff", record.topic, error
                )
        if self._stale(msg):
            self._abandon(msg, record)
            return
        if record.backoff is None:
            record.backoff = Backoff(self._settings.kafka_retry_backoff_s, RETRY_BACKOFF_MAX_S)
        handle = asyncio.get_running_loop().call_later(record.backoff.delay(), self._retry, msg, record)
        self._timers[handle] = (msg, record)

    def _retry(self, msg: Message, record: Record) -> None:
        now = asyncio.get_running_loop().time()
        self._timers = {h: v for h, v in self._timers.items() if not h.cancelled() and h.when() > now}
        self._stats.kafka_retries += 1
        self._again.append((msg, record))
        self._wake.set()

    def _retry_all_now(self) -> None:
        waiting = [item for handle, item in self._timers.items() if not handle.cancelled()]
        self.cancel_retries()
        for msg, record in waiting:
            self._stats.kafka_retries += 1
            self._again.append((msg, record))
        self._wake.set()

    def _abandon(self, msg: Message, record: Record) -> None:
        # The MQTT connection that delivered the message is gone: the broker redelivers it, unacknowledged.
        if record.failed:
            record.failed = False
            self.failing -= 1
        msg.abandoned = True
        self._record_done(msg)

    def _advance_acks(self) -> None:
        pending = self.pending
        mqtt = self._mqtt
        if pending and pending[0].outstanding == 0:
            self.progress_at = time.monotonic()
        while pending and pending[0].outstanding == 0:
            msg = pending.popleft()
            self.in_flight_bytes -= msg.nbytes
            if not msg.abandoned and msg.qos and mqtt.ack(msg.mid, msg.qos, msg.generation):
                self._stats.messages_acked += 1
        if not pending:
            self.idle.set()
        s = self._settings
        if (
            self.paused
            and not self.stopping
            and len(pending) <= s.max_in_flight
            and self.in_flight_bytes <= s.max_in_flight_bytes
        ):
            self.paused = False
            mqtt.resume()
