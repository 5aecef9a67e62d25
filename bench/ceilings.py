"""The ceilings the end-to-end figures are divided by, measured with the very payloads and rows of the run.

Broker: ``mosquitto_pub -q 1 -l`` processes into ``mosquitto_sub -q 1`` (mosquitto's C clients), the
measurement of ``bench/ingest.py``. Database: an asyncpg COPY into a hypertable with the raw table's unique
key, the measurement of ``bench/consume.py``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from bench.consume import copy_ceiling
from bench.ingest import MAX_LINES_PER_PUBLISHER, PREFIX, Workload, broker_ceiling
from core.readings import Envelope, Reading
from core.types import ReadingFlag
from simulator.generate import Simulation
from simulator.model import Message
from simulator.settings import SimulatorSettings


@dataclass
class Prepared:
    """A phase's stream as the ceilings need it: payload files for ``mosquitto_pub`` and the rows."""

    workload: Workload
    envelopes: list[Envelope]
    payload_bytes: int


def prepare(name: str, settings: SimulatorSettings, publishers: int, workdir: Path) -> Prepared:
    """Generate the phase's messages once more (same settings, same bytes) and keep only what the ceilings
    need: each payload as a line of a ``mosquitto_pub -l`` input file, on topics under the ceiling's own
    prefix so the bridge never sees them, and the readings the store must hold."""
    count = settings.count or 0
    publishers = max(publishers, -(-count // MAX_LINES_PER_PUBLISHER))
    per = max(1, -(-count // publishers))
    paths = [workdir / f"ceiling-{name}-{p}.lines" for p in range(publishers)]
    rows: list[Envelope] = []
    lines = readings = size = 0
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(path.open("wb")) for path in paths]
        for i, message in enumerate(Simulation(settings).messages()):
            size += len(message.payload)
            if message.readings:
                readings += len(message.readings)
                rows.append(_envelope(message))
            # mosquitto_pub -l ends a message at a newline and at a NUL byte (and drops it if empty):
            # the few malformed payloads with either are left out of the broker ceiling.
            if b"\n" not in message.payload and b"\0" not in message.payload:
                outs[i // per].write(message.payload + b"\n")
                lines += 1
    files = [(f"{PREFIX}/ceiling/{name}-{p}/telemetry", path) for p, path in enumerate(paths)]
    return Prepared(Workload(name, lines, round(readings / max(lines, 1)), files), rows, size)


def broker_msgs_per_s(port: int, workload: Workload, repeats: int) -> float:
    """The best of ``repeats`` broker QoS 1 ceilings (messages/s): a ceiling is what the broker *can* do."""
    return max(broker_ceiling(port, workload) for _ in range(repeats))


def _envelope(message: Message) -> Envelope:
    """The message's readings as the bridge hands them to the consumer."""
    readings = tuple(
        Reading(r.metric, r.ts_us, r.value, int(ReadingFlag.OUT_OF_RANGE) if r.out_of_range else 0)
        for r in message.readings
    )
    return Envelope(message.device_id, "", "bench", message.sim_time_us, readings)


async def copy_rows_per_s(dsn: str, envelopes: list[Envelope]) -> tuple[int, float]:
    """(distinct rows, rows/s) of a COPY of the run's rows into a hypertable with the unique key."""
    rows, elapsed = await copy_ceiling(dsn, envelopes, unique=True)
    return rows, rows / elapsed
