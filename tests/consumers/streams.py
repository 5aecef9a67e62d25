"""Generated reading streams for the consumer tests: out of order, retransmitted, counters that reset."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime

from consumers.rollup import StoredReading
from core.readings import Envelope, Reading, encode_envelope, to_us

COUNTERS = frozenset({"energy_import_kwh", "water_volume_m3"})
GAUGES = ("temperature", "water_flow")
START_US = to_us(datetime(2024, 1, 31, 20, tzinfo=UTC))
"""Near a month boundary, so streams cross hours, days and months."""


@dataclass(frozen=True, slots=True)
class Record:
    """A Kafka record as the consumer sees it (what aiokafka's ConsumerRecord carries)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def seeded(seed: int) -> random.Random:
    """A reproducible generator for test data (not for secrets)."""
    return random.Random(seed)  # noqa: S311


def make_stream(rnd: random.Random, devices: int, messages: int, *, step_s: int = 600) -> list[Envelope]:
    """Envelopes of ``devices`` devices, mostly in time order, with late, duplicated and reset readings.

    Values are multiples of 1/4 so that every sum is exact in any order.
    """
    meters = {f"dev-{i:03d}": rnd.randint(0, 400) / 4 for i in range(devices)}
    clock = {d: START_US + rnd.randint(0, 3600) * 1_000_000 for d in meters}
    sent: list[Envelope] = []
    for _ in range(messages):
        device = rnd.choice(sorted(meters))
        roll = rnd.random()
        if roll < 0.08 and sent:
            sent.append(rnd.choice(sent))  # retransmission of a whole message
            continue
        if roll < 0.16:
            ts = clock[device] - rnd.randint(1, 30) * step_s * 1_000_000  # late
        else:
            clock[device] += rnd.randint(1, 3) * step_s * 1_000_000
            ts = clock[device]
        if rnd.random() < 0.05:
            meters[device] = rnd.randint(0, 20) / 4  # meter replaced / restarted
        else:
            meters[device] += rnd.randint(0, 40) / 4
        readings = [
            Reading("energy_import_kwh", ts, meters[device], 0),
            Reading("temperature", ts, rnd.randint(-80, 160) / 4, rnd.choice([0, 0, 0, 1, 4])),
        ]
        if device.endswith(("0", "5")):
            readings.append(Reading("water_volume_m3", ts, meters[device] / 2, 0))
        if rnd.random() < 0.05:
            # Same (device, metric, ts) again with another value: the first one stored wins.
            readings.append(Reading("temperature", ts, 99.0, 0))
        domain = "power" if int(device[-1]) % 2 else "building"
        sent.append(Envelope(device, domain, "bridge-1", ts + rnd.randint(0, 10**6), tuple(readings)))
    return sent


def first_seen(envelopes: list[Envelope]) -> dict[tuple[str, str, int], StoredReading]:
    """The readings the store must hold, computed independently: first occurrence of each key wins."""
    out: dict[tuple[str, str, int], StoredReading] = {}
    for env in envelopes:
        for r in env.readings:
            key = (env.device_id, r.metric, r.ts_us)
            if key not in out:
                out[key] = StoredReading(env.device_id, r.metric, r.ts_us, r.value, r.flags)
    return out


def as_records(envelopes: list[Envelope], topic: str = "readings", partitions: int = 3) -> list[Record]:
    """Kafka records keyed by device, spread over partitions like the bridge does."""
    offsets = [0] * partitions
    out = []
    for env in envelopes:
        p = sum(env.device_id.encode()) % partitions
        out.append(Record(topic, p, offsets[p], env.device_id.encode(), encode_envelope(env)))
        offsets[p] += 1
    return out
