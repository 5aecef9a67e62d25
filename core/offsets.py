"""Each partition's real end offset, which a broker's ListOffsets answer alone does not give.

Tansu (the dev stack's Kafka-protocol broker) answers ListOffsets with the base offset of the last
record batch + 1 instead of the last offset + 1: after batched produces it under-reports the end by up
to a batch. Apache Kafka answers right. :func:`real_end_offsets` works on both: it takes the reported
end ``e`` and reads from ``e - 1`` (the last batch's base offset on Tansu, the last record on Kafka)
until a fetch at the reached position comes back empty, or the records read reach the high watermark
of the fetch answer that carried them (so a partition still written to is not followed for long); the
end is max(e, last offset read + 1).

Every reader of end offsets uses it: the dev stack's drain and Tansu rotation, the API's lag and
overview, the consumer where ``latest`` starts. (The consumer's lag metric uses the high watermark of
its fetch responses, which Tansu reports right.)

It lives in ``core`` because ``ingest``, ``consumers`` and ``api`` may all import ``core`` and never
each other; ``core`` imports no I/O library, so the function is typed against :class:`EndReader`, the
few methods of aiokafka's ``AIOKafkaConsumer`` it calls, and each caller passes its own client
(``group_id=None``: the probe assigns and seeks) and handles that client's errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

TP = TypeVar("TP", bound=Hashable)

PROBE_WAIT_MS = 100
"""Longest wait of one fetch round; callers give their client the same ``fetch_max_wait_ms``."""

PROBE_CLIENT_OPTIONS: Final[Mapping[str, object]] = {
    # No group: the probe assigns and seeks, which a group member must not.
    "group_id": None,
    "enable_auto_commit": False,
    "fetch_max_wait_ms": PROBE_WAIT_MS,
    # A probe position out of range (retention deleted it meanwhile) restarts at the reported end.
    "auto_offset_reset": "latest",
}
"""Keyword arguments of the ``AIOKafkaConsumer`` every caller of :func:`real_end_offsets` builds."""


class HasOffset(Protocol):
    """A fetched record: only its offset matters here."""

    @property
    def offset(self) -> int:
        """The record's offset in its partition."""


class EndReader(Protocol[TP]):
    """The methods of a Kafka consumer client (aiokafka's, without a group) the probe calls."""

    async def beginning_offsets(self, partitions: list[TP]) -> Mapping[TP, int]:
        """Log-start offset per partition (ListOffsets earliest)."""

    async def end_offsets(self, partitions: list[TP]) -> Mapping[TP, int]:
        """End offset per partition as the broker reports it (ListOffsets latest)."""

    def assign(self, partitions: list[TP]) -> None:
        """Read exactly these partitions."""

    def seek(self, partition: TP, offset: int) -> None:
        """Fetch ``partition`` from ``offset`` next."""

    def pause(self, *partitions: TP) -> None:
        """Stop fetching these partitions."""

    def highwater(self, partition: TP) -> int | None:
        """High watermark in the last fetch answer for ``partition`` (None before the first)."""

    def last_poll_timestamp(self, partition: TP) -> int | None:
        """Wall-clock ms of the last fetch response for the current position (None before the first)."""

    async def getmany(self, *partitions: TP, timeout_ms: int = ...) -> Mapping[TP, Sequence[HasOffset]]:
        """Records fetched so far, waiting up to ``timeout_ms`` for some."""


@dataclass(frozen=True, slots=True)
class EndOffsets(Generic[TP]):
    """Real end offset per partition. ``unsettled`` ones may be low: no record from ``e - 1`` on and no
    empty answer arrived in time. The others are at least the end as of the call (a partition still
    written to may have grown since)."""

    ends: dict[TP, int]
    unsettled: frozenset[TP]


async def real_end_offsets(
    client: EndReader[TP],
    partitions: Iterable[TP],
    *,
    max_wait_s: float = 5.0,
    max_records: int = 100_000,
) -> EndOffsets[TP]:
    """The offset after the last record of each partition, read past what ListOffsets reports.

    Bounded: at most ``max_wait_s`` of fetching and ``max_records`` records read over all partitions.
    A partition still written to keeps yielding records: its end is the highest seen within the bounds.
    One that yielded neither a record nor an empty answer within them keeps its reported end and is
    listed as unsettled.
    ``client`` must be a consumer without a group: its assignment is replaced.
    """
    wanted = list(dict.fromkeys(partitions))
    if not wanted:
        return EndOffsets({}, frozenset())
    reported = {tp: int(o) for tp, o in (await client.end_offsets(wanted)).items()}
    starts = {tp: int(o) for tp, o in (await client.beginning_offsets(wanted)).items()}
    ends = dict(reported)
    # A partition whose log starts at its reported end holds no record (empty, or all deleted). From
    # e - 1 on (the log start, if retention removed e - 1), a record compaction removed or a
    # transaction marker is simply not returned: the end is then e.
    pending = {tp for tp in wanted if reported[tp] > starts.get(tp, 0)}
    if not pending:
        return EndOffsets(ends, frozenset())
    client.assign(wanted)
    # Fetch responses since this wall-clock ms are for the position we reached (aiokafka stamps only
    # responses for the current position, and fetches nothing while records wait to be taken).
    since: dict[TP, int] = {}
    for tp in pending:
        client.seek(tp, max(reported[tp] - 1, starts.get(tp, 0)))
        since[tp] = _now_ms()
    client.pause(*(tp for tp in wanted if tp not in pending))
    deadline = time.monotonic() + max_wait_s
    read = 0
    # Records from e - 1 on arrived: the last batch as of the call was read (on Tansu it holds e - 1,
    # on Kafka e - 1 is the last record), so the end is known as of the call; later ones are newer.
    reached: set[TP] = set()
    while pending and read < max_records:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            break
        batch = await client.getmany(*pending, timeout_ms=min(PROBE_WAIT_MS, left_ms))
        returned = _now_ms()
        for tp, records in batch.items():
            if records:
                read += len(records)
                ends[tp] = max(ends[tp], max(int(r.offset) for r in records) + 1)
                since[tp] = returned
                reached.add(tp)
                high = client.highwater(tp)
                if high is not None and ends[tp] >= high:
                    # Everything the broker held when it answered: what comes later is newer.
                    pending.discard(tp)
                    client.pause(tp)
        for tp in [tp for tp in pending if not batch.get(tp)]:
            polled = client.last_poll_timestamp(tp)
            # Strictly later: a response stamped in the same ms as our last take may be the one we took.
            if polled is not None and polled > since[tp]:
                pending.discard(tp)
                client.pause(tp)
    # Not fetched any further meanwhile: the client may be used again (or only stopped) later.
    client.pause(*pending)
    unsettled = frozenset(pending - reached)
    if unsettled:
        log.warning(
            "end offsets of %d partition(s) not settled within %.1f s / %d records: %s",
            len(unsettled),
            max_wait_s,
            max_records,
            sorted(map(str, unsettled)),
        )
    return EndOffsets(ends, unsettled)


def _now_ms() -> int:
    # aiokafka stamps fetch responses with int(1000 * time.time()): the same clock.
    return int(1000 * time.time())
