"""The bridge under a sustained stream of 256 KiB messages of invalid readings (``make bench-ingest``).

Each message is a batch of ~9,000 readings that are all rejected (unknown metrics and non-numeric values,
alternately) but two valid ones: once a message became 9,000 dead-letter records and ~37 MB of bridge
memory. The publishers send far faster than the bridge handles such messages, so a backlog waits for it
in Mosquitto throughout. It prints the sustained messages/s until the bridge acknowledged every one, the
dead-letter records Kafka took, the rejected readings counted, and the bridge's peak resident memory
(``VmHWM``) against its 300 MB target. A second run stalls Kafka (SIGSTOP) a quarter of the way in until
the bridge's byte budget stops its intake: the memory it holds when nothing is acknowledged.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import orjson

from bench.ingest import (
    PREFIX,
    Workload,
    cpu_seconds,
    scrape,
    scrape_rejected,
    start_bridge,
    start_publishers,
    wait_all,
)
from bench.procmem import MB, pids_with_argument, status_kb
from ingest.settings import BridgeSettings

MEMORY_TARGET_MB: Final = 300
MAX_PAYLOAD_BYTES: Final = 262_144


def invalid_batch(valid: Sequence[float], max_bytes: int = MAX_PAYLOAD_BYTES) -> tuple[bytes, Counter[str]]:
    """A batch of ``valid`` water_flow readings, then invalid readings until ``max_bytes`` is reached;
    and the rejections (by reason) the bridge must count for it."""
    items = [orjson.dumps({"metric": "water_flow", "value": v, "ts": 1_767_000_000}) for v in valid]
    expected: Counter[str] = Counter()
    size = len(b'{"readings":[]}') + sum(len(item) + 1 for item in items)
    i = 0
    while True:
        if i % 2:
            item, reason = b'{"metric":"pm10","value":"%d"}' % (i % 10), "non_numeric_value"
        else:
            item, reason = b'{"metric":"f%d","value":1}' % (i % 10), "unknown_metric"
        if size + len(item) + 1 > max_bytes:
            break
        items.append(item)
        expected[reason] += 1
        size += len(item) + 1
        i += 1
    return b'{"readings":[' + b",".join(items) + b"]}", expected


@dataclass(frozen=True)
class StreamResult:
    """What one bridge did with the stream."""

    messages: int
    msg_per_s: float
    dead_letters: int
    rejected: int
    readings: int
    peak_rss_mb: float
    cpu_share: float
    slowest_metrics_s: float
    """The slowest answer of the bridge's /metrics during the stream (scraped every 50 ms)."""
    in_flight_peak_mb: float
    """The most bytes of records of unacknowledged messages the bridge held (-1: not exported)."""
    intake_pauses: int


def make_stream(messages: int, publishers: int, workdir: Path) -> tuple[Workload, int]:
    """Payload files of ``messages`` invalid batches (each with 2 valid readings) over ``publishers``,
    and the number of readings the bridge must reject in all."""
    files = []
    per = -(-messages // publishers)
    written = 0
    rejected = 0
    for p in range(publishers):
        path = workdir / f"deadletters-{p}.lines"
        count = min(per, messages - written)
        with path.open("wb") as out:
            for i in range(written, written + count):
                payload, expected = invalid_batch([float(2 * i), float(2 * i + 1)])
                out.write(payload + b"\n")
                rejected += expected.total()
        written += count
        files.append((f"{PREFIX}/water/deadletters-{p}/telemetry", path))
    return Workload("deadletters", messages, 2, files), rejected


class KafkaStall:
    """Stops the Kafka broker's processes (SIGSTOP) once a quarter of the stream is acknowledged, until
    the bridge paused its intake at the byte budget (or 60 s), then lets them go on (SIGCONT)."""

    def __init__(self, pids: list[int], after_acks: int) -> None:
        self.pids = pids
        self.after_acks = after_acks
        self.started: float | None = None
        self.seconds = 0.0

    def step(self, stats: dict[str, float]) -> None:
        """Stop or continue Kafka according to the bridge's counters."""
        now = time.perf_counter()
        if self.started is None and not self.seconds:
            if stats.get("cityingest_bridge_messages_acked_total", 0) >= self.after_acks:
                self._signal(signal.SIGSTOP)
                self.started = now
        elif self.started is not None and (
            stats.get("cityingest_bridge_intake_pauses_total", 0) > 0 or now - self.started > 60
        ):
            time.sleep(2)  # paused: it must stay within the budget while Kafka stays away
            self.release()

    def release(self) -> None:
        """Let Kafka go on (idempotent)."""
        if self.started is not None:
            self._signal(signal.SIGCONT)
            self.seconds = time.perf_counter() - self.started
            self.started = None

    def _signal(self, sig: signal.Signals) -> None:
        for pid in self.pids:
            os.kill(pid, sig)


def run_stream(
    mqtt_port: int, kafka: str, workload: Workload, workdir: Path, stall: KafkaStall | None = None
) -> StreamResult:
    """Time one bridge draining the stream (published as fast as Mosquitto takes it), and its peak memory."""
    bridge, http_port = start_bridge(mqtt_port, kafka, workload.name, workdir)
    try:
        assert bridge.pid is not None
        cpu0 = cpu_seconds(bridge.pid)
        start = time.perf_counter()
        wait_all(start_publishers(mqtt_port, workload))
        slowest = 0.0
        while True:
            asked = time.perf_counter()
            stats = scrape(http_port)
            slowest = max(slowest, time.perf_counter() - asked)
            acked = stats.get("cityingest_bridge_messages_acked_total", 0)
            if acked >= workload.messages:
                break
            if stall is not None:
                stall.step(stats)
            if time.perf_counter() - start > 1800 or not bridge.alive():
                raise RuntimeError(f"only {acked:.0f} of {workload.messages} messages acknowledged")
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(bridge.pid) - cpu0
        peak_kb = status_kb(bridge.pid, "VmHWM") or 0  # the kernel's high-water mark: exact, unsampled
        stats = scrape(http_port)
        rejected = scrape_rejected(http_port)
    finally:
        if stall is not None:
            stall.release()
        bridge.stop()
    return StreamResult(
        messages=workload.messages,
        msg_per_s=workload.messages / elapsed,
        dead_letters=int(stats["cityingest_bridge_dead_letters_total"]),
        rejected=rejected.total(),
        readings=int(stats["cityingest_bridge_readings_forwarded_total"]),
        peak_rss_mb=peak_kb * 1024 / MB,
        cpu_share=cpu / elapsed,
        slowest_metrics_s=slowest,
        in_flight_peak_mb=stats.get("cityingest_bridge_in_flight_bytes_peak", -1) / MB,
        intake_pauses=int(stats.get("cityingest_bridge_intake_pauses_total", -1)),
    )


def report(mqtt_port: int, kafka: str, messages: int, publishers: int, workdir: Path) -> None:
    """Run the dead-letter stream twice, the second time with Kafka stalled until the byte budget
    stops the bridge's intake, and print the figures of each (after the tables of bench.ingest)."""
    workload, expected = make_stream(messages, publishers, workdir)
    per_message = expected // messages
    print(
        f"\ndead-letter stream: {messages:,} messages of {MAX_PAYLOAD_BYTES // 1024} KiB, each "
        f"~{per_message:,} invalid readings and {workload.readings_per_message} valid ones"
    )
    stall = KafkaStall(pids_with_argument(f"tcp://{kafka}"), messages // 4)
    if not stall.pids:
        raise RuntimeError(f"no Kafka broker process listening on tcp://{kafka}")
    runs = [
        ("as fast as it goes", run_stream(mqtt_port, kafka, workload, workdir)),
        (
            "Kafka stalled",
            run_stream(mqtt_port, kafka, replace(workload, name="deadletters-stalled"), workdir, stall),
        ),
    ]
    print(
        f"  {'run':<20} {'msg/s':>6} {'dead letters':>12} {'rejected readings':>17} {'readings':>8} "
        f"{'bridge CPU':>10} {'slowest /metrics':>16} {'in flight':>9} {'pauses':>6} {'peak RSS':>8}"
    )
    for name, r in runs:
        if r.dead_letters != messages or r.rejected != expected:
            raise RuntimeError(f"{name}: the bridge's dead letters do not match the stream: {r}")
        print(
            f"  {name:<20} {r.msg_per_s:>6.1f} {r.dead_letters:>12,} {r.rejected:>17,} {r.readings:>8,} "
            f"{r.cpu_share:>10.0%} {r.slowest_metrics_s * 1000:>13,.0f} ms {r.in_flight_peak_mb:>6.1f} MB "
            f"{r.intake_pauses:>6} {r.peak_rss_mb:>5.0f} MB"
        )
    budget = BridgeSettings.model_fields["max_in_flight_bytes"].default
    worst = max(r.peak_rss_mb for _, r in runs)
    verdict = "met" if worst < MEMORY_TARGET_MB else "NOT met"
    print(
        f"  Kafka stalled {stall.seconds:.0f} s; in-flight byte budget {budget / MB:.1f} MB; "
        f"peak bridge RSS {worst:.0f} MB against the {MEMORY_TARGET_MB} MB target: {verdict}"
    )
