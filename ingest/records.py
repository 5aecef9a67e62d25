"""One MQTT message -> the Kafka records it becomes (pure: no I/O).

A message becomes the envelope of its valid readings on the readings topic (split into several records
when it holds more than :data:`MAX_READINGS_PER_RECORD` readings), keyed by device id so a device's
records share a partition, plus at most one dead letter on the dead-letter topic: a rejected whole payload
becomes a dead letter carrying the raw payload (cut to ``max_payload_bytes`` when it was too large), and
the rejected readings of an accepted payload become ONE dead letter carrying the payload once, every
rejected reading counted by reason and the first :data:`MAX_DETAILS` in detail. So the records of a
message are bounded by its size, whatever the number of its rejected readings, and every dead letter fits
in a Kafka record (:data:`MAX_DEAD_LETTER_PAYLOAD_BYTES`).
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from typing import TYPE_CHECKING, Final

from core.deadletter import DeadLetter, RejectedItem, RejectedReadings, encode_dead_letter
from core.errors import RejectedPayload
from core.readings import Envelope, encode_envelope
from core.runtime import Backoff
from core.types import RejectReason
from ingest.parse import ParseResult, PayloadParser

if TYPE_CHECKING:
    import paho.mqtt.client as paho

log = logging.getLogger(__name__)

MAX_READINGS_PER_RECORD: Final = 5_000
"""Larger envelopes are split so a record stays well under Kafka's default 1 MiB limit."""
MAX_DETAILS: Final = 100
"""Rejected readings of a message described one by one in its dead letter; the others are only counted."""
MAX_DETAIL_CHARS: Final = 200
MAX_MESSAGE_CHARS: Final = 1_000
MAX_ORIGIN_CHARS: Final = 1_024
MAX_DEAD_LETTER_PAYLOAD_BYTES: Final = 393_216
"""384 KiB, above the default ``max_payload_bytes``: the payload at most doubles in the dead letter's JSON,
plus at most ~100 KB of details, message and origin, so a dead letter stays under Kafka's 1 MiB record."""


class Record:
    """One Kafka record made from an MQTT message, and its delivery state."""

    __slots__ = ("backoff", "failed", "key", "readings", "refused_substitute", "topic", "value")

    def __init__(self, topic: str, key: bytes | None, value: bytes, readings: int) -> None:
        self.topic, self.key, self.value, self.readings = topic, key, value, readings
        self.failed = False
        self.backoff: Backoff | None = None
        """The retry delays of this record, from its first retriable failure on."""
        self.refused_substitute = False
        """Whether this is the dead letter of a record Kafka refused for good."""


class RecordMaker:
    """Builds the records of each message for one bridge; counts rejections by reason."""

    def __init__(
        self,
        parser: PayloadParser,
        *,
        bridge_id: str,
        readings_topic: str,
        dlq_topic: str,
        max_payload_bytes: int,
        rejected: Counter[str],
    ) -> None:
        self._parser = parser
        self._bridge_id = bridge_id
        self._readings_topic = readings_topic
        self._dlq_topic = dlq_topic
        self._max_payload_bytes = max_payload_bytes
        self._rejected = rejected

    def of_message(self, message: paho.MQTTMessage, received_us: int) -> tuple[str, list[Record]]:
        """The topic and records of one MQTT message. Never raises: whatever fails is dead-lettered as
        internal_error, so the message is acknowledged like any other and never blocks the ones behind it."""
        topic, raw = "", b""
        try:
            raw = bytes(message.payload)
            try:
                topic = message.topic
            except UnicodeDecodeError:  # brokers refuse such topics; never trust that
                topic = message._topic.decode("utf-8", "replace")
            if message.retain:
                return topic, [self.retained(topic, raw, received_us)]
            return topic, self.records(raw, topic, received_us)
        except Exception as exc:
            log.exception("handling a message from %r failed; dead-lettering it as internal_error", topic)
            return topic, [self.internal_error(exc, topic, raw, received_us)]

    def records(self, payload: bytes, topic: str, received_us: int) -> list[Record]:
        """The records of one message; never raises."""
        parser = self._parser
        try:
            result = parser.parse(payload, topic, received_us)
        except RejectedPayload as exc:
            raw, message = payload, exc.message
            if exc.reason == RejectReason.PAYLOAD_TOO_LARGE:
                raw = payload[: min(self._max_payload_bytes, MAX_DEAD_LETTER_PAYLOAD_BYTES)]
                message = f"{message}; the dead letter keeps the first {len(raw)} bytes"
            return [self.dead_letter(exc.reason, message, topic, raw, received_us, parser.device_of(topic))]
        except Exception as exc:  # a parser bug must neither stall the bridge nor lose the payload
            log.exception("parser failed on a message from %s", topic)
            return [self.internal_error(exc, topic, payload, received_us)]
        records = [] if result.envelope is None else self.envelope_records(result.envelope)
        if result.rejections:
            records.append(self.rejected_readings(result, payload, topic, received_us))
        return records

    def envelope_records(self, env: Envelope) -> list[Record]:
        """The envelope as one record, or several of at most MAX_READINGS_PER_RECORD readings each."""
        key = env.device_id.encode("utf-8")
        topic = self._readings_topic
        if len(env.readings) <= MAX_READINGS_PER_RECORD:
            return [Record(topic, key, encode_envelope(env), len(env.readings))]
        records = []
        for start in range(0, len(env.readings), MAX_READINGS_PER_RECORD):
            chunk = env.readings[start : start + MAX_READINGS_PER_RECORD]
            part = Envelope(env.device_id, env.domain, env.bridge_id, env.received_us, chunk)
            records.append(Record(topic, key, encode_envelope(part), len(chunk)))
        return records

    def rejected_readings(self, result: ParseResult, payload: bytes, topic: str, received_us: int) -> Record:
        """The one dead letter of a message's rejected readings: the payload once, every rejection counted
        by reason (the top-level reason is the most frequent), the first MAX_DETAILS in detail."""
        counts = Counter(r.reason for r in result.rejections)
        self._rejected.update(counts)
        details = tuple(
            RejectedItem(r.index, r.reason, r.message[:MAX_DETAIL_CHARS])
            for r in result.rejections[:MAX_DETAILS]
        )
        forwarded = 0 if result.envelope is None else len(result.envelope.readings)
        # most_common keeps first-seen order on ties: the reason met first in the payload wins.
        reason = counts.most_common(1)[0][0]
        by_reason = ", ".join(f"{r} {n}" for r, n in counts.most_common())
        message = f"{counts.total()} rejected ({by_reason}), {forwarded} forwarded; {details[0].message}"
        raw, message = self._kept(payload, message)
        dl = DeadLetter(
            reason,
            message,
            "mqtt",
            topic[:MAX_ORIGIN_CHARS],
            raw,
            received_us,
            self._bridge_id,
            result.device_id,
            RejectedReadings(dict(counts), forwarded, details),
        )
        return Record(self._dlq_topic, result.device_id.encode("utf-8"), encode_dead_letter(dl), 0)

    def dead_letter(
        self, reason: str, message: str, topic: str, raw: bytes, received_us: int, device_id: str | None
    ) -> Record:
        """The dead letter of a whole rejected payload (keyed by device id when known)."""
        self._rejected[reason] += 1
        raw, message = self._kept(raw, message)
        dl = DeadLetter(
            reason, message, "mqtt", topic[:MAX_ORIGIN_CHARS], raw, received_us, self._bridge_id, device_id
        )
        key = device_id.encode("utf-8") if device_id else None
        return Record(self._dlq_topic, key, encode_dead_letter(dl), 0)

    @staticmethod
    def _kept(raw: bytes, message: str) -> tuple[bytes, str]:
        """The part of a payload a dead letter keeps (all of it below the cap), and the message saying so."""
        message = message[:MAX_MESSAGE_CHARS]
        if len(raw) <= MAX_DEAD_LETTER_PAYLOAD_BYTES:
            return raw, message
        kept = raw[:MAX_DEAD_LETTER_PAYLOAD_BYTES]
        return kept, f"{message}; the dead letter keeps the first {len(kept)} bytes"

    def retained(self, topic: str, raw: bytes, received_us: int) -> Record:
        """The ``retained`` dead letter of a broker's stored retained copy; it makes no reading."""
        message = (
            "a retained copy the broker sent on subscribe, not a new message: it makes no reading "
            "(live publishes, retained or not, are taken once)"
        )
        return self.dead_letter(
            RejectReason.RETAINED, message, topic, raw, received_us, self._parser.device_of(topic)
        )

    def refused(self, record: Record, why: str, topic: str, received_us: int, keep_bytes: int) -> Record:
        """The ``record_too_large`` dead letter of a record Kafka refused for good; it keeps the record's
        first ``keep_bytes`` (the readings it carried are lost, and the message says so)."""
        raw = record.value[:keep_bytes]
        device = record.key.decode("utf-8", "replace") if record.key else None
        message = (
            f"Kafka refused a {len(record.value)}-byte record for {record.topic} ({why}); "
            f"its {record.readings} readings are not forwarded; "
            f"the dead letter keeps its first {len(raw)} bytes"
        )
        letter = self.dead_letter(RejectReason.RECORD_TOO_LARGE, message, topic, raw, received_us, device)
        letter.refused_substitute = True
        return letter

    def internal_error(self, exc: BaseException, topic: str, raw: bytes, received_us: int) -> Record:
        """The ``internal_error`` dead letter of a message a bug of ours failed on; never raises."""
        reason = RejectReason.INTERNAL_ERROR
        self._rejected[reason] += 1
        try:
            kept, message = self._kept(raw, repr(exc))
            dl = DeadLetter(
                reason, message, "mqtt", topic[:MAX_ORIGIN_CHARS], kept, received_us, self._bridge_id
            )
            return Record(self._dlq_topic, None, encode_dead_letter(dl), 0)
        except Exception:  # not even that: keep the payload in the plainest form there is
            log.exception("cannot build the dead letter of a message from %r; writing a minimal one", topic)
        value = minimal_dead_letter(type(exc).__name__, topic, raw, received_us, self._bridge_id)
        return Record(self._dlq_topic, None, value, 0)


def minimal_dead_letter(message: str, topic: str, raw: bytes, received_us: int, component: str) -> bytes:
    """An ``internal_error`` dead letter in the :mod:`core.deadletter` format from nothing but the standard
    library and ASCII (lone surrogates escaped, payload in base64), for when the ordinary one failed."""

    def text(value: str) -> str:
        # Lone surrogates, the one thing a JSON reader may refuse, become visible escapes.
        return json.dumps(value.encode("utf-8", "backslashreplace").decode("utf-8"), ensure_ascii=True)

    payload = base64.b64encode(raw).decode("ascii")
    return (
        f'{{"v":1,"reason":"{RejectReason.INTERNAL_ERROR.value}","message":{text(message)},'
        f'"source":"mqtt","origin":{text(topic)},"device":null,"payload":"{payload}",'
        f'"payload_encoding":"base64","received":{int(received_us)},"component":{text(component)}}}'
    ).encode("ascii")
