"""The end-to-end benchmark's figures and the table it prints, each target met or NOT met."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from bench.latency import percentile
from bench.procmem import MB, Watched
from bench.simpub import Shape

MEMORY_TARGET_MB: Final = 300.0
P99_TARGET_S: Final = 2.0
SHOWN_DIFFERENCES: Final = 5
CPU_COLUMNS: Final = (
    "bridge",
    "consumer",
    "api",
    "postgres",
    "mosquitto",
    "tansu",
    "publisher",
    "bench harness",
)


@dataclass(frozen=True)
class Spec:
    """A workload: its payload shape and its sustained target (readings/s)."""

    name: str
    shape: Shape
    label: str
    target: float


@dataclass
class Check:
    """The store against the truth of one phase."""

    series: int
    api_series: int
    differences: list[str]
    bridge: str

    @property
    def ok(self) -> bool:
        """Whether everything matched."""
        return not self.differences


@dataclass
class Sustained:
    """One sustained phase."""

    spec: Spec
    messages: int
    readings: int
    payload_bytes: int
    publish_s: float
    """First publish to the broker's last acknowledgement."""
    bridge_s: float | None
    """First publish until the bridge had acknowledged every message (Kafka took them); 0.2 s resolution."""
    store_s: float
    """First publish until the rollups counted every reading."""
    broker_ceiling: float
    copy_rows: int
    copy_ceiling: float
    cpu: dict[str, float]
    """Share of one core per process (and the machine's busy share) while measured."""
    cpu_wall_s: float
    """Seconds the CPU shares were measured over."""
    check: Check

    @property
    def rate(self) -> float:
        """Readings/s from first publish to queryable."""
        return self.readings / self.store_s

    @property
    def broker_ceiling_readings(self) -> float:
        """The broker ceiling in readings/s (messages/s times readings per message)."""
        return self.broker_ceiling * self.readings / self.messages


@dataclass
class Latency:
    """One half-rate phase."""

    spec: Spec
    offered: float
    readings: int
    achieved: float
    drain_s: float
    """From the last publish until the rollups had everything: a backlog shows here."""
    latencies: list[float]
    probes: int
    interval_s: float
    mean_query_s: float
    cpu: dict[str, float]
    cpu_wall_s: float
    check: Check

    @property
    def p99(self) -> float:
        """99th percentile latency (s)."""
        return percentile(self.latencies, 99)


@dataclass
class Results:
    """Everything one run measured."""

    load: float
    """Load average when the run started."""
    sustained: list[Sustained] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    idle: dict[str, float] | None = None
    """CPU shares with no traffic, at the end."""
    failure: str = ""


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    """Cells right-aligned to ``widths`` (a negative width left-aligns)."""
    return "".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))


def _header(args: argparse.Namespace, load: float) -> None:
    cpus = os.cpu_count()
    print(f"\ncityingest end-to-end benchmark (issue 6): {cpus} CPUs, load average {load:.2f} at start")
    print("  the machine is shared: absolute figures are noisy, ratios come from this same run")
    print(f"  devices: bench.simpub, the simulator's seeded generator ({args.devices:,} devices a city, seed "
          f"{args.seed}, default faults),")  # fmt: skip
    print(f"    pre-encoded, published over one raw MQTT 3.1.1 connection, QoS 1, window {args.window:,}")
    print("    (not the simulator's paho publisher: it tops out near 6,000 messages/s alone on this machine)")
    print(f"  pipeline: 1 bridge, {args.consumers} consumer(s), 1 API, each `python -m cli ...`;")
    print(f"    Mosquitto, Tansu ({args.partitions} partitions), PostgreSQL 15 + TimescaleDB")


def _sustained(runs: Sequence[Sustained], targets: list[bool]) -> None:
    print("\nSustained: first publish -> every reading counted in the rollups (times from first publish)")
    widths = (-24, 9, 10, 11, 9, 9, 11, 17)
    head = ("workload", "messages", "readings", "published", "bridge", "stored", "readings/s", "target")
    print(_row(head, widths))
    for s in runs:
        ok = s.rate >= s.spec.target
        targets.append(ok)
        bridge = "?" if s.bridge_s is None else f"{s.bridge_s:.1f} s"
        cells = (s.spec.label, f"{s.messages:,}", f"{s.readings:,}", f"{s.publish_s:.1f} s", bridge,
                 f"{s.store_s:.1f} s", f"{s.rate:,.0f}", f"{s.spec.target:,.0f} {_met(ok)}")  # fmt: skip
        print(_row(cells, widths))
    print("  published: the broker acknowledged every message; bridge: the bridge had acknowledged every")
    print("  message, i.e. Kafka held its readings (0.2 s resolution); stored: the rollups counted them all")
    for s in runs:
        if s.bridge_s is not None:
            paced = (
                "MQTT -> bridge -> Kafka" if s.bridge_s > 0.9 * s.store_s else "Kafka -> consumer -> database"
            )
            print(
                f"  {s.spec.name}: the bridge was done at {s.bridge_s / s.store_s:.0%} of the time, "
                f"so {paced} set the pace"
            )
    print("\nCeilings measured in this run with the same payloads and rows")
    ceiling_widths = (-24, 38, 7, 17, 7)
    ceiling_head = ("workload", "broker QoS 1, mosquitto C clients", "ratio", "COPY, unique key", "ratio")
    print(_row(ceiling_head, ceiling_widths))
    for s in runs:
        broker = f"{s.broker_ceiling:,.0f} msg/s = {s.broker_ceiling_readings:,.0f} r/s"
        ratios = (s.spec.label, broker, f"{s.rate / s.broker_ceiling_readings:.0%}",
                  f"{s.copy_ceiling:,.0f} rows/s", f"{s.rate / s.copy_ceiling:.0%}")  # fmt: skip
        print(_row(ratios, ceiling_widths))


def _column_share(cpu: dict[str, float], column: str) -> float:
    return sum(v for k, v in cpu.items() if k == column or k.startswith(column + "-"))


def _cpu_per_reading(runs: Sequence[Sustained], latencies: Sequence[Latency]) -> None:
    print("\nCPU time per reading, in µs (what the machine's neighbours distort least)")
    columns = CPU_COLUMNS[:-1]
    widths = (-20, *[10] * len(columns), 9)
    print(_row(("phase", *(n.split()[0] for n in columns), "total"), widths))
    phases = [(f"{s.spec.name} sustained", s.cpu, s.cpu_wall_s, s.readings) for s in runs]
    phases += [(f"{x.spec.name} half rate", x.cpu, x.cpu_wall_s, x.readings) for x in latencies]
    for label, cpu, wall, readings in phases:
        per = [_column_share(cpu, c) * wall / readings * 1e6 for c in columns]
        print(_row((label, *(f"{x:.1f}" for x in per), f"{sum(per):.1f}"), widths))


def _cpu(results: Results) -> None:
    print(f"\nCPU while measured, % of one core ({os.cpu_count()} cores); others: the machine's busy time "
          "minus all of the above")  # fmt: skip
    widths = (-20, *[10] * len(CPU_COLUMNS), 9, 8)
    print(_row(("phase", *(n.split()[0] for n in CPU_COLUMNS), "machine", "others"), widths))
    phases = [(f"{s.spec.name} sustained", s.cpu) for s in results.sustained]
    phases += [(f"{lat.spec.name} half rate", lat.cpu) for lat in results.latencies]
    if results.idle is not None:
        phases.append(("idle, no traffic", results.idle))
    for label, cpu in phases:
        shares = [_column_share(cpu, c) for c in CPU_COLUMNS]
        busy = cpu.get("(machine busy)", 0.0)
        others = max(busy - sum(shares), 0.0)
        print(_row((label, *(f"{x:.0%}" for x in shares), f"{busy:.0%}", f"{others:.0%}"), widths))


def _latency(latencies: Sequence[Latency], targets: list[bool]) -> None:
    print("\nLatency at half the sustained rate: probe published -> its row committed (raw and rollups)")
    widths = (-24, 11, 10, 9, 10, 10, 10, 8, 18)
    head = ("workload", "offered r/s", "achieved", "probes", "p50", "p99", "max", "drain", "target p99")
    print(_row(head, widths))
    for lat in latencies:
        ok = not math.isnan(lat.p99) and lat.p99 < P99_TARGET_S and len(lat.latencies) == lat.probes
        targets.append(ok)
        cells = (lat.spec.label, f"{lat.offered:,.0f}", f"{lat.achieved:,.0f}",
                 f"{len(lat.latencies)}/{lat.probes}", _ms(percentile(lat.latencies, 50)), _ms(lat.p99),
                 _ms(max(lat.latencies, default=math.nan)), f"{lat.drain_s:.1f} s",
                 f"< {P99_TARGET_S:g} s {_met(ok)}")  # fmt: skip
        print(_row(cells, widths))
    print("  drain: from the last publish until the rollups had every reading (a backlog shows here)")
    for lat in latencies:
        late = lat.interval_s + lat.mean_query_s
        print(f"  {lat.spec.name}: a poll every {_ms(lat.interval_s)}, {lat.mean_query_s * 1000:.1f} ms a "
              f"query: each latency is an upper bound, at most ~{_ms(late)} late")  # fmt: skip


def _memory(parts: Sequence[Watched], targets: list[bool]) -> None:
    print(f"\nPeak memory (VmHWM), target < {MEMORY_TARGET_MB:.0f} MB each")
    for part in parts:
        if part.ours:
            mb = part.peak_kb * 1024 / MB
            ok = 0 < mb < MEMORY_TARGET_MB
            targets.append(ok)
            print(f"  {part.name:<22}{mb:>8,.0f} MB  {_met(ok)}")
    print("  for information (postgres: peak sum of Pss over its processes; shared_buffers is 1 GB):")
    print("    " + ", ".join(f"{p.name} {p.peak_kb * 1024 / MB:,.0f} MB" for p in parts if not p.ours))


def _truth(checks: Sequence[tuple[str, Check]]) -> None:
    print("\nStore against the simulator's truth, per device and metric: raw, hourly, daily, monthly")
    for label, check in checks:
        verdict = "PASS" if check.ok else "FAIL"
        print(f"  {label:<20}{verdict}  {check.series:,} series, {check.api_series} also through the API")
        print(f"  {'':<26}{check.bridge}")
        for line in check.differences[:SHOWN_DIFFERENCES]:
            print(f"    {line}")
        if len(check.differences) > SHOWN_DIFFERENCES:
            print(f"    ... {len(check.differences) - SHOWN_DIFFERENCES} more differences")


def report(args: argparse.Namespace, results: Results, parts: Sequence[Watched]) -> bool:
    """Print every figure; True when the run completed and every store check passed."""
    targets: list[bool] = []
    _header(args, results.load)
    if results.sustained:
        _sustained(results.sustained, targets)
        _cpu(results)
        _cpu_per_reading(results.sustained, results.latencies)
    if results.latencies:
        _latency(results.latencies, targets)
    _memory(parts, targets)
    checks = [(f"{s.spec.name} sustained", s.check) for s in results.sustained]
    checks += [(f"{lat.spec.name} half rate", lat.check) for lat in results.latencies]
    _truth(checks)
    truth_ok = bool(checks) and all(check.ok for _, check in checks)
    if results.failure:
        print(f"\nINCOMPLETE: {results.failure}")
    run = "incomplete" if results.failure else "complete"
    verdict = "PASS" if truth_ok else "FAIL"
    print(f"\nresult: {run}, truth {verdict}; targets met: {sum(targets)} of {len(targets)}")
    return not results.failure and truth_ok
