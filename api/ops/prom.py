"""The few counters the operators' overview needs, read from a component's Prometheus exposition.

Names are mapped to one vocabulary shared by bridges and consumers, so the overview can sum the same
figure over every instance and the rate code never needs to know which component it came from.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Final, Literal

from prometheus_client.parser import text_string_to_metric_families

from core import metricnames as names
from core.metricnames import sample_name

Kind = Literal["bridge", "consumer", "component"]

INGEST_READINGS: Final = "ingest_readings"
INGEST_MESSAGES: Final = "ingest_messages"
CONSUME_READINGS: Final = "consume_readings"
STORED_READINGS: Final = "stored_readings"
DEAD_LETTERS: Final = "dead_letters"

# Sample names as exposed (a counter family ``x`` exposes its value as ``x_total``).
_COUNTERS: Final = {
    sample_name(names.BRIDGE_READINGS_FORWARDED): INGEST_READINGS,
    sample_name(names.BRIDGE_MESSAGES_RECEIVED): INGEST_MESSAGES,
    sample_name(names.BRIDGE_DEAD_LETTERS): DEAD_LETTERS,
    sample_name(names.CONSUMER_READINGS): CONSUME_READINGS,
    sample_name(names.CONSUMER_READINGS_STORED): STORED_READINGS,
}
# Rejections by reason: the bridge counts rejected payloads and readings, the consumer the records it
# dead-letters (which are also its whole dead-letter count).
_BRIDGE_REJECTED: Final = sample_name(names.BRIDGE_REJECTED)
_CONSUMER_DEAD: Final = sample_name(names.CONSUMER_DEAD_LETTERS)


@dataclass(frozen=True, slots=True)
class Scrape:
    """What one component's /metrics said: its kind, its counters, its rejections by reason."""

    kind: Kind
    counters: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, float] = field(default_factory=dict)


def parse_metrics(text: str) -> Scrape:
    """The overview's counters in a Prometheus text exposition; ValueError if it cannot be parsed."""
    try:
        return _parse(text)
    except (IndexError, KeyError, TypeError) as exc:
        # The parser raises ValueError for what it recognises as malformed; anything else from text
        # a component sent is malformed too, and must not fail the whole overview.
        raise ValueError(f"malformed exposition: {exc!r}") from exc


def _parse(text: str) -> Scrape:
    counters: defaultdict[str, float] = defaultdict(float)
    rejected: defaultdict[str, float] = defaultdict(float)
    kind: Kind = "component"
    for family in text_string_to_metric_families(text):
        if family.name.startswith(names.BRIDGE_PREFIX + "_"):
            kind = "bridge"
        elif family.name.startswith(names.CONSUMER_PREFIX + "_"):
            kind = "consumer"
        for sample in family.samples:
            if sample.name in _COUNTERS:
                counters[_COUNTERS[sample.name]] += sample.value
            elif sample.name in (_BRIDGE_REJECTED, _CONSUMER_DEAD):
                rejected[sample.labels.get("reason") or "unknown"] += sample.value
                if sample.name == _CONSUMER_DEAD:
                    counters[DEAD_LETTERS] += sample.value
    if kind == "consumer":
        # A labelled counter has no sample before its first increment; zero is what it means.
        counters[DEAD_LETTERS] += 0
    return Scrape(kind, dict(counters), dict(rejected))
