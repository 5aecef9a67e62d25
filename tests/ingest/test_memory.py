"""The bridge's records held for Kafka cost their bytes in resident memory, not three times as much."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: the heap of the test process says nothing about the bridge's.
_HOLD = """
import os
import sys
from collections import Counter
from bench.deadletters import invalid_batch
from bench.procmem import status_kb
from core.catalogue import load_catalogue
from ingest.memory import fix_mmap_threshold
from ingest.parse import PayloadParser
from ingest.records import RecordMaker

if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
parser = PayloadParser(load_catalogue(), bridge_id="b", topic_prefix="city")
maker = RecordMaker(
    parser, bridge_id="b", readings_topic="r", dlq_topic="d", max_payload_bytes=262_144, rejected=Counter()
)
payloads = [invalid_batch([float(i)])[0] for i in range(3)]
topic, now_us = "city/water/x/telemetry", 1_767_000_000_000_000
before = status_kb(os.getpid(), "VmRSS") or 0
held = [maker.records(bytes(payloads[i % 3]), topic, now_us) for i in range(120)]
after = status_kb(os.getpid(), "VmRSS") or 0
print(sum(len(r.value) for records in held for r in records), (after - before) * 1024)
"""


def _held_and_grown(mode: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _HOLD, mode], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    held, grown = (int(v) for v in out.split())
    return held, grown


@pytest.mark.slow
def test_records_held_for_kafka_do_not_fragment_the_heap() -> None:
    held, grown = _held_and_grown("fixed")
    assert held > 40_000_000  # 120 dead letters of ~336 KB, as a Kafka stall leaves them in flight
    assert grown < 1.5 * held
    # Without the fixed threshold glibc's heap keeps the holes the short-lived buffers leave.
    held, grown = _held_and_grown("default")
    assert grown > 2 * held
