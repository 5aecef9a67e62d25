"""What the pipeline must end up with for the messages that were sent: the truth tests compare to.

Pure. Values are accumulated as integer thousandths of the canonical unit, so sums are exact whatever
the order in which messages are acknowledged. A duplicate (an exact re-send) counts once; a malformed
payload counts only as a dead letter. A reading a device sent in another unit counts with its
canonical value: the bridge's float conversion lands within ``units.ROUND_TRIP_TOLERANCE`` (relative)
of it, far closer than the float sums of the store can be compared anyway.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from core.readings import from_us
from simulator.model import Device, Message, SimReading

log = logging.getLogger(__name__)

TRUTH_VERSION: Final = 1
INCREASE_RULE: Final = (
    "over a series' stored readings in time order, the sum of v[i] - v[i-1] when v[i] >= v[i-1], "
    "else v[i] (a reset: the meter counted v[i] since it restarted from zero)"
)
_METRIC_TOTALS: Final = ("count", "sum_milli", "out_of_range", "unit_converted")
_SEEN_CAPACITY: Final = 200_000
"""Originals remembered to recognise their duplicates, which follow within a few hundred messages."""


def reset_aware_increase(values: Iterable[int]) -> int:
    """The increase of a counter over ``values`` in time order (see :data:`INCREASE_RULE`)."""
    total = 0
    previous: int | None = None
    for value in values:
        if previous is not None:
            total += value - previous if value >= previous else value
        previous = value
    return total


def _delta(previous: int, value: int) -> int:
    return value - previous if value >= previous else value


class IncreaseTracker:
    """The reset-aware increase of one counter series, with readings arriving somewhat out of order.

    Keeps the most recent ``window`` readings sorted by time and folds older ones into a running
    total, so memory stays bounded on endless runs; a reading older than the folded part (later
    than ``window`` readings) is counted approximately and logged.
    """

    def __init__(self, window: int = 1024) -> None:
        self._window = window
        self._folded = 0
        self._anchor: tuple[int, int] | None = None
        """(ts_us, value) of the last reading folded into ``_folded``."""
        self._tail: list[tuple[int, int]] = []

    def add(self, ts_us: int, value: int) -> None:
        """Take one reading (thousandths) into account."""
        if self._anchor is not None and ts_us <= self._anchor[0]:
            log.warning("counter reading at %s is older than the tracked window; increase approximate", ts_us)
            return
        bisect.insort(self._tail, (ts_us, value))
        if len(self._tail) > self._window:
            oldest = self._tail.pop(0)
            if self._anchor is not None:
                self._folded += _delta(self._anchor[1], oldest[1])
            self._anchor = oldest

    @property
    def increase(self) -> int:
        """The increase so far, in thousandths."""
        values = [self._anchor[1]] if self._anchor is not None else []
        values.extend(v for _, v in self._tail)
        return self._folded + reset_aware_increase(values)


@dataclass(slots=True)
class SeriesTruth:
    """Totals of one (device, metric) series, in thousandths."""

    count: int = 0
    sum_milli: int = 0
    min_milli: int | None = None
    max_milli: int | None = None
    first_ts_us: int | None = None
    last_ts_us: int | None = None
    out_of_range: int = 0
    resets: int = 0
    unit_converted: int = 0
    increase: IncreaseTracker | None = None

    def add(self, reading: SimReading) -> None:
        """Count one distinct reading."""
        self.count += 1
        self.sum_milli += reading.value_milli
        v, ts = reading.value_milli, reading.ts_us
        self.min_milli = v if self.min_milli is None else min(self.min_milli, v)
        self.max_milli = v if self.max_milli is None else max(self.max_milli, v)
        self.first_ts_us = ts if self.first_ts_us is None else min(self.first_ts_us, ts)
        self.last_ts_us = ts if self.last_ts_us is None else max(self.last_ts_us, ts)
        self.out_of_range += reading.out_of_range
        self.unit_converted += reading.unit_converted
        self.resets += reading.reset
        if reading.counter:
            if self.increase is None:
                self.increase = IncreaseTracker()
            self.increase.add(ts, v)

    def to_dict(self) -> dict[str, Any]:
        """The series as JSON-ready numbers (values in the metric's unit)."""
        doc: dict[str, Any] = {
            "count": self.count,
            "sum": self.sum_milli / 1000,
            "min": None if self.min_milli is None else self.min_milli / 1000,
            "max": None if self.max_milli is None else self.max_milli / 1000,
            "first_ts_us": self.first_ts_us,
            "last_ts_us": self.last_ts_us,
            "out_of_range": self.out_of_range,
            "unit_converted": self.unit_converted,
        }
        if self.increase is not None:
            doc["increase"] = self.increase.increase / 1000
            doc["resets"] = self.resets
        return doc


@dataclass(slots=True)
class Truth:
    """Accumulates acknowledged messages into what the store and the dead-letter topic must hold."""

    devices: tuple[Device, ...]
    seed: int | None = None
    start_us: int | None = None
    messages: Counter[str] = field(default_factory=Counter)
    shapes: Counter[str] = field(default_factory=Counter)
    malformed: Counter[str] = field(default_factory=Counter)
    series: dict[str, dict[str, SeriesTruth]] = field(default_factory=dict)
    registered: tuple[str, ...] | None = None
    """Devices registered through the API before publishing; None when the run registered none."""
    _seen: dict[int, None] = field(default_factory=dict)

    def record(self, message: Message) -> None:
        """Account for one message the broker acknowledged (in any order)."""
        self.messages["total"] += 1
        if message.malformed is not None:
            self.messages["malformed"] += 1
            self.malformed[message.malformed] += 1
            return
        self.messages["late"] += message.late
        self.messages["reordered"] += message.reordered
        key = message.seq if message.duplicate_of is None else message.duplicate_of
        if message.duplicate_of is not None:
            self.messages["duplicates"] += 1
        if key in self._seen:
            return
        # The first of an original and its re-sends to arrive carries the readings.
        self._seen[key] = None
        if len(self._seen) > _SEEN_CAPACITY:
            del self._seen[next(iter(self._seen))]
        if message.shape is not None:
            self.shapes[message.shape] += 1
        device_series = self.series.setdefault(message.device_id, {})
        for reading in message.readings:
            device_series.setdefault(reading.metric, SeriesTruth()).add(reading)

    @property
    def readings(self) -> int:
        """Distinct readings the store must hold."""
        return sum(s.count for per_device in self.series.values() for s in per_device.values())

    def to_dict(self) -> dict[str, Any]:
        """The truth as a JSON-ready document."""
        per_metric: dict[str, dict[str, Any]] = {}
        per_domain: Counter[str] = Counter()
        per_district: Counter[str] = Counter()
        per_provenance: Counter[str] = Counter()
        by_id = {d.device_id: d for d in self.devices}
        first: int | None = None
        last: int | None = None
        for device_id, metrics in self.series.items():
            device = by_id.get(device_id)
            for metric, s in metrics.items():
                totals = per_metric.setdefault(metric, dict.fromkeys(_METRIC_TOTALS, 0))
                totals["count"] += s.count
                totals["sum_milli"] += s.sum_milli
                totals["out_of_range"] += s.out_of_range
                totals["unit_converted"] += s.unit_converted
                if device is not None:
                    per_domain[device.domain] += s.count
                    per_district[device.district] += s.count
                    per_provenance[device.provenance.value] += s.count
                if s.first_ts_us is not None and s.last_ts_us is not None:
                    first = s.first_ts_us if first is None else min(first, s.first_ts_us)
                    last = s.last_ts_us if last is None else max(last, s.last_ts_us)
        return {
            "version": TRUTH_VERSION,
            "seed": self.seed,
            "start": _iso(self.start_us),
            "messages": {
                k: self.messages[k] for k in ("total", "malformed", "duplicates", "late", "reordered")
            },
            "shapes": dict(sorted(self.shapes.items())),
            "malformed": dict(sorted(self.malformed.items())),
            # Each malformed payload is built to become exactly one dead letter standing for one
            # rejection of its reason: these counts equal the bridge's rejected{reason} counters and the
            # sum of the dead letters' rejections() (a dead letter counts each rejected reading).
            "dead_letters": dict(sorted(self.malformed.items())),
            "readings": {
                "total": self.readings,
                "out_of_range": sum(m["out_of_range"] for m in per_metric.values()),
                "unit_converted": sum(m["unit_converted"] for m in per_metric.values()),
                "first_ts": _iso(first),
                "last_ts": _iso(last),
                "first_ts_us": first,
                "last_ts_us": last,
            },
            "metrics": {
                m: {
                    "count": t["count"],
                    "sum": t["sum_milli"] / 1000,
                    "out_of_range": t["out_of_range"],
                    "unit_converted": t["unit_converted"],
                }
                for m, t in sorted(per_metric.items())
            },
            "domains": dict(sorted(per_domain.items())),
            "districts": dict(sorted(per_district.items())),
            "provenance": dict(sorted(per_provenance.items())),
            "increase_rule": INCREASE_RULE,
            "devices": {
                d.device_id: {
                    "domain": d.domain,
                    "district": d.district,
                    "provenance": d.provenance.value,
                    "metrics": list(d.metrics),
                    "shape": d.shape,
                    "units": dict(d.units),
                }
                for d in self.devices
            },
            # The others stay unregistered: the consumer inserts them as such when they first report.
            "registered": None if self.registered is None else sorted(self.registered),
            "series": {
                device_id: {metric: s.to_dict() for metric, s in sorted(metrics.items())}
                for device_id, metrics in sorted(self.series.items())
            },
        }

    def write(self, path: Path) -> None:
        """Write the truth as JSON, atomically (a reader never sees half a file)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)


def _iso(us: int | None) -> str | None:
    if us is None:
        return None
    moment: datetime = from_us(us)
    return moment.isoformat().replace("+00:00", "Z")
