"""Expected figures recomputed in plain Python from the readings a test sent (never by the API's SQL)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

Sent = tuple[str, str, datetime, float, int]
"""(device, metric, time, value, flags)"""


def bucket_of(ts: datetime, bucket: str) -> datetime:
    """Start of the UTC hour, day or month of ``ts``."""
    if bucket == "1h":
        return ts.replace(minute=0, second=0, microsecond=0)
    if bucket == "1d":
        return ts.replace(hour=0, minute=0, second=0, microsecond=0)
    return datetime(ts.year, ts.month, 1, tzinfo=UTC)


@dataclass
class Acc:
    """Running figures of one bucket."""

    values: list[float] = field(default_factory=list)
    increase: float = 0.0
    flagged: int = 0
    devices: set[str] = field(default_factory=set)

    @property
    def count(self) -> int:
        return len(self.values)


def increases(sent: Iterable[Sent]) -> dict[tuple[str, str, datetime], float]:
    """Each counter reading's increase over its predecessor in time (reset: the new value)."""
    series: dict[tuple[str, str], list[tuple[datetime, float]]] = defaultdict(list)
    for device, metric, ts, value, _ in sent:
        series[(device, metric)].append((ts, value))
    out: dict[tuple[str, str, datetime], float] = {}
    for (device, metric), points in series.items():
        prev: float | None = None
        for ts, value in sorted(points):
            out[(device, metric, ts)] = 0.0 if prev is None else (value - prev if value >= prev else value)
            prev = value
    return out


def fold(
    sent: Iterable[Sent], bucket: str, key: Iterable[str] = ("device",), **dims: dict[str, str]
) -> dict[tuple[object, ...], Acc]:
    """Figures per (bucket start, key...) where key parts are 'device', 'metric' or a dims mapping name."""
    unique = {(d, m, ts): (d, m, ts, v, f) for d, m, ts, v, f in reversed(list(sent))}  # first wins
    inc = increases(unique.values())
    out: dict[tuple[object, ...], Acc] = defaultdict(Acc)
    for device, metric, ts, value, flags in unique.values():
        parts: list[object] = [bucket_of(ts, bucket), metric]
        for k in key:
            parts.append(device if k == "device" else dims[k].get(device))
        acc = out[tuple(parts)]
        acc.values.append(value)
        acc.increase += inc[(device, metric, ts)]
        acc.flagged += 1 if flags & 3 else 0
        acc.devices.add(device)
    return out
