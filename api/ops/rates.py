"""Per-second rates from successive samples of monotonic counters, across restarts of their sources.

Each API process keeps its own recent samples: rates need no shared state, so any replica behind a
load balancer answers with rates of its own that are right over its own window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

Sample = Mapping[str, Mapping[str, float]]
"""source (a component instance, or ``kafka``) -> counter name -> value."""

MIN_WINDOW_S: Final = 60.0
"""Rates compare with a sample at least this old when there is one (like Prometheus ``rate(x[1m])``):
devices typically report once a minute, so shorter windows swing between a burst and zero."""
KEEP_S: Final = 120.0
MAX_SAMPLES: Final = 512


def counter_delta(previous: float, current: float) -> float:
    """How much a counter grew; a counter that went down restarted from zero (its process restarted)."""
    return current - previous if current >= previous else current


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-second rates of each counter, summed over the sources present in both samples."""

    window_s: float | None
    """Seconds between the two samples compared; None while there is only one."""
    per_s: dict[str, float]


def rates_between(previous: Sample, current: Sample, window_s: float) -> dict[str, float]:
    """Summed per-second growth of each counter seen in both samples, by counter name."""
    out: dict[str, float] = {}
    for source, counters in current.items():
        before = previous.get(source)
        if before is None:
            continue
        for name, value in counters.items():
            if name in before:
                out[name] = out.get(name, 0.0) + counter_delta(before[name], value) / window_s
    return out


class RateTracker:
    """Recent samples (bounded in age and number); each new sample is compared with an older one."""

    def __init__(self, min_window_s: float = MIN_WINDOW_S, keep_s: float = KEEP_S) -> None:
        self._min_window_s = min_window_s
        self._keep_s = keep_s
        self._samples: deque[tuple[float, Sample]] = deque(maxlen=MAX_SAMPLES)

    def observe(self, now: float, sample: Sample) -> Rates:
        """Record ``sample`` taken at monotonic time ``now``; rates since the best older sample."""
        while self._samples and now - self._samples[0][0] > self._keep_s:
            self._samples.popleft()
        # The newest sample at least min_window_s old, else the oldest one (a younger API process).
        base: tuple[float, Sample] | None = None
        for taken, old in self._samples:
            if now - taken >= self._min_window_s or base is None:
                base = (taken, old)
        self._samples.append((now, sample))
        if base is None or now - base[0] <= 0:
            return Rates(None, {})
        window = now - base[0]
        return Rates(window, rates_between(base[1], sample, window))
