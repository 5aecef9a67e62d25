"""Consumer lag from stored offsets and Kafka end offsets (no I/O: the callers fetch both)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from api.ops.models import Lag, LagTotals, PartitionLag
from api.queries import Record

Ends = Mapping[tuple[str, int], int]
"""Real end offset by (topic, partition), from :func:`core.offsets.real_end_offsets`."""


def build_lag(rows: Sequence[Record], ends: Ends | None, warning: str | None) -> Lag:
    """Lag per group, topic and partition; ``ends`` None when Kafka did not answer."""
    stored = {(r["group_id"], r["topic"], int(r["partition"])): r for r in rows}
    keys = set(stored)
    if ends is not None:
        # Partitions a group has never applied a batch of are lagging too.
        for group in {g for g, _, _ in stored}:
            group_topics = {t for g, t, _ in stored if g == group}
            keys |= {(group, t, p) for t, p in ends if t in group_topics}
    items: list[PartitionLag] = []
    for key in sorted(keys):
        row = stored.get(key)
        end = ends.get(key[1:]) if ends is not None else None
        offset = int(row["next_offset"]) if row is not None else None
        items.append(
            PartitionLag(
                group_id=key[0],
                topic=key[1],
                partition=key[2],
                end_offset=end,
                stored_offset=offset,
                lag=None if end is None else max(0, end - (offset or 0)),
                last_applied_at=row["applied_at"] if row is not None else None,
            )
        )
    known = [i for i in items if i.lag is not None]
    totals = LagTotals(
        partitions=len(items),
        lag=sum(i.lag or 0 for i in known) if ends is not None else None,
        end_offset=sum(i.end_offset or 0 for i in known) if ends is not None else None,
        stored_offset=sum(i.stored_offset or 0 for i in items),
    )
    return Lag(partitions=items, totals=totals, warning=warning)


def kafka_warning(bootstrap: str, timeout_s: float) -> str:
    """What the lag view says when Kafka did not answer."""
    return (
        f"Kafka at {bootstrap} did not answer within {timeout_s:g} s: "
        "end offsets and lag are unknown; stored offsets are current"
    )


def unsettled_warning(unsettled: Iterable[tuple[str, int]]) -> str | None:
    """What the lag view says when reading past a reported end offset was not answered in time."""
    names = sorted(f"{t}/{p}" for t, p in unsettled)
    if not names:
        return None
    return (
        f"end offsets of {', '.join(names)} may be low: reading past the end Kafka reported "
        "was not answered in time"
    )
