"""Memory and CPU of the benchmark's processes, read from /proc (Linux only).

Peak memory is the kernel's high-water mark of resident memory (``VmHWM``), exact whatever the sampling
rate; it must be read while the process still runs. A service made of several processes (PostgreSQL:
the postmaster and its backends, which all map the same shared buffers) is measured as the sum of their
proportional set sizes (``Pss``), sampled, so shared pages count once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.ingest import cpu_seconds

MB = 1_000_000


def status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (``VmHWM``, ``VmRSS``), or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def pss_kb(pid: int) -> int:
    """Proportional set size of a process (0 when it is gone or unreadable)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text(encoding="ascii").splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    out = []
    for child in _all_pids():
        fields = _stat_fields(child)
        if fields is not None and int(fields[1]) == pid:
            out.append(child)
    return out


def pids_with_argument(argument: str) -> list[int]:
    """Processes one of whose command-line arguments is exactly ``argument``."""
    found = []
    for pid in _all_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in argv:
            found.append(pid)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``, of its live children, and of the children it has reaped already."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    total = _cpu_or_zero(pid) + reaped
    return total + sum(_cpu_or_zero(child) for child in children(pid))


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError):
        return 0.0


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


@dataclass
class Watched:
    """A named part of the benchmark: its process ids (looked up on each sample) and how to measure it."""

    name: str
    pids: Callable[[], list[int]]
    ours: bool
    """One of cityingest's own processes (held to the memory target), else a service, for information."""
    tree: bool = False
    """Measure the process with its children, by Pss (PostgreSQL)."""
    peak_kb: int = 0
    """Highest VmHWM seen (processes) or highest sampled Pss sum (trees)."""

    def sample(self) -> None:
        """Fold the current memory of the processes into ``peak_kb``."""
        for pid in self.pids():
            if self.tree:
                total = pss_kb(pid) + sum(pss_kb(child) for child in children(pid))
                self.peak_kb = max(self.peak_kb, total)
            else:
                self.peak_kb = max(self.peak_kb, status_kb(pid, "VmHWM") or 0)

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the processes (and, for trees, their children)."""
        measure = tree_cpu_seconds if self.tree else _cpu_or_zero
        return sum(measure(pid) for pid in self.pids())


class Watcher:
    """Samples every watched part's memory in the background; ``cpu_snapshot`` for per-phase CPU shares."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.parts: list[Watched] = []
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def watch(self, part: Watched) -> Watched:
        """Add a part to the samples."""
        self.parts.append(part)
        return part

    def sample(self) -> None:
        """Take one sample of every part now."""
        for part in self.parts:
            part.sample()

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        """Start sampling in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop sampling (after one last sample). Idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sample()

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds per part so far, plus the machine's busy and total seconds."""
        snap = {part.name: part.cpu_seconds() for part in self.parts}
        snap["(machine busy)"], snap["(machine total)"] = machine_cpu()
        return snap
