"""Turn a list of Kafka records into what one database transaction applies, without I/O.

Every record either contributes readings or becomes a dead letter: anything the store would refuse
(NUL characters, absurd timestamps, oversized identifiers) is caught here, so a poison record can never
make the batch fail again and again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from core.deadletter import DeadLetter
from core.errors import EnvelopeError
from core.readings import Envelope, decode_envelope
from core.types import RejectReason

MAX_ID_CHARS: Final = 200
"""Longest device id, metric or domain the store accepts (keeps index entries small)."""
MIN_TS_US: Final = 0
"""1970-01-01: smart-city readings are never older."""
MAX_TS_US: Final = 32_503_680_000_000_000
"""3000-01-01: anything later is a broken clock, not a reading."""

Partition = tuple[str, int]
"""(topic, partition)"""
Row = tuple[str, str, int, float, int]
"""(device_id, metric, ts_us, value, flags)"""


class KafkaRecord(Protocol):
    """The parts of an aiokafka ``ConsumerRecord`` the consumer uses."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(slots=True)
class DeviceSeen:
    """What one batch tells about one device."""

    domain: str
    first_received_us: int
    last_received_us: int
    last_reading_us: int


@dataclass(slots=True)
class PreparedBatch:
    """Readings (unique within the batch, first occurrence wins), devices, offsets and dead letters."""

    rows: list[Row] = field(default_factory=list)
    devices: dict[str, DeviceSeen] = field(default_factory=dict)
    offsets: dict[Partition, int] = field(default_factory=dict)
    """Next offset to read per partition once this batch is applied."""
    dead_letters: list[DeadLetter] = field(default_factory=list)
    records: int = 0
    readings: int = 0
    """Readings in the decoded records, including in-batch duplicates."""

    @property
    def batch_duplicates(self) -> int:
        """Readings dropped because the same (device, metric, ts) came earlier in this batch."""
        return self.readings - len(self.rows)

    @property
    def partitions(self) -> list[Partition]:
        """The partitions this batch advances, sorted (the order locks are taken in)."""
        return sorted(self.offsets)


def _check_text(value: str, what: str) -> None:
    if len(value) > MAX_ID_CHARS:
        raise EnvelopeError(RejectReason.ENVELOPE_UNDECODABLE.value, f"{what} is longer than {MAX_ID_CHARS}")
    if "\x00" in value:
        raise EnvelopeError(RejectReason.ENVELOPE_UNDECODABLE.value, f"{what} contains a NUL character")


def check_storable(env: Envelope) -> None:
    """Raise :class:`EnvelopeError` if the store could not hold this envelope's readings."""
    _check_text(env.device_id, "device id")
    _check_text(env.domain, "domain")
    for r in env.readings:
        _check_text(r.metric, f"metric {r.metric[:40]!r}")
        if not MIN_TS_US <= r.ts_us < MAX_TS_US:
            raise EnvelopeError(
                RejectReason.BAD_TIMESTAMP.value, f"reading time {r.ts_us} µs is outside 1970..3000"
            )


def dead_letter_for(
    record: KafkaRecord, reason: str, message: str, *, component_id: str, now_us: int
) -> DeadLetter:
    """The dead letter of a record the consumer could not apply."""
    device: str | None = None
    if record.key is not None:
        device = record.key.decode("utf-8", errors="replace")
    return DeadLetter(
        reason=reason,
        message=message,
        source="kafka",
        origin=f"{record.topic}/{record.partition}/{record.offset}",
        raw=record.value or b"",
        received_us=now_us,
        component_id=component_id,
        device_id=device,
    )


def prepare(records: Iterable[KafkaRecord], *, component_id: str, now_us: int) -> PreparedBatch:
    """Decode and validate ``records`` into one :class:`PreparedBatch`."""
    batch = PreparedBatch()
    seen: dict[tuple[str, str, int], None] = {}
    rows = batch.rows
    devices = batch.devices
    for record in records:
        batch.records += 1
        tp = (record.topic, record.partition)
        if record.offset + 1 > batch.offsets.get(tp, -1):
            batch.offsets[tp] = record.offset + 1
        try:
            env = decode_envelope(record.value)
            check_storable(env)
        except EnvelopeError as exc:
            batch.dead_letters.append(
                dead_letter_for(record, exc.reason, exc.message, component_id=component_id, now_us=now_us)
            )
            continue
        device = env.device_id
        batch.readings += len(env.readings)
        last_ts = -1
        for r in env.readings:
            key = (device, r.metric, r.ts_us)
            if key not in seen:
                seen[key] = None
                rows.append((device, r.metric, r.ts_us, r.value, r.flags))
            last_ts = max(last_ts, r.ts_us)
        dev = devices.get(device)
        if dev is None:
            devices[device] = DeviceSeen(env.domain, env.received_us, env.received_us, last_ts)
        else:
            dev.first_received_us = min(dev.first_received_us, env.received_us)
            dev.last_received_us = max(dev.last_received_us, env.received_us)
            dev.last_reading_us = max(dev.last_reading_us, last_ts)
    return batch


def split_by_partition(records: Sequence[KafkaRecord], shards: int) -> list[list[KafkaRecord]]:
    """Split records into at most ``shards`` groups of whole partitions, to apply them in parallel."""
    parts = sorted({(r.topic, r.partition) for r in records})
    if shards <= 1 or len(parts) <= 1:
        return [list(records)] if records else []
    shard_of = {tp: i % shards for i, tp in enumerate(parts)}
    groups: list[list[KafkaRecord]] = [[] for _ in range(min(shards, len(parts)))]
    for r in records:
        groups[shard_of[(r.topic, r.partition)]].append(r)
    return groups
