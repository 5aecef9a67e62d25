"""Child processes never outlive the process that started them, even when it is SIGKILLed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.runtime import Backoff
from devstack.process import ChildProcess, free_port, port_is_free
from devstack.settings import DevSettings
from devstack.stack import Component, DevStack
from devstack.supervise import ServiceWatch, restart_backoff
from tests.ingest.support import eventually

SCRIPT = """
import sys, time
from pathlib import Path
from devstack.process import ChildProcess
argv = [sys.executable, "-c", "import time; time.sleep(120)"]
child = ChildProcess("sleeper", argv, log_path=Path(sys.argv[1]))
child.start()
print(child.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone for our purpose once its parent (init) reaps it.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] == "Z"


def test_child_dies_when_parent_is_killed(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "child.log")], stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert not _gone(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while not _gone(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child_pid), "the child outlived its SIGKILLed parent"


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    # A child that ignores SIGTERM is killed after the timeout, together with its process group.
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    child = ChildProcess("stubborn", [sys.executable, "-c", code], log_path=tmp_path / "s.log")
    child.start()
    deadline = time.monotonic() + 10
    while "up" not in child.tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    assert not child.alive()


def test_free_port_is_free() -> None:
    port = free_port()
    assert port_is_free(port)


@pytest.mark.parametrize("missing", ["/nonexistent/bin"])
def test_missing_postgres_names_the_install_command(tmp_path: Path, missing: str) -> None:
    env = dict(os.environ, CITYINGEST_PG_BIN=missing)
    code = (
        "from pathlib import Path; from devstack.postgres import PostgresCluster;"
        f"PostgresCluster(Path({str(tmp_path)!r}) / 'pg', 5999).start()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "apt-get install postgresql-15" in result.stderr
    assert "make setup" in result.stderr


def test_supervised_processes_restart_with_the_one_backoff() -> None:
    backoff = restart_backoff()
    assert (backoff.initial, backoff.maximum) == (1.0, 10.0)
    assert [backoff.delay() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 10.0]


class _Sleeper:
    """A stand-in service: a real process that a test can kill."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: ChildProcess | None = None
        self.starts = 0

    def start(self, timeout: float = 10.0) -> None:  # noqa: ARG002 - the Service protocol's signature
        self.proc = ChildProcess(
            "sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], log_path=self.log_path
        )
        self.proc.start()
        self.starts += 1

    def exit_code(self) -> int | None:
        return self.proc.returncode() if self.proc is not None else None

    def reset(self) -> None:
        if self.proc is not None and not self.proc.alive():
            self.proc.kill_leftovers()
            self.proc.wait_stopped()
            self.proc = None


async def test_service_watch_restarts_a_killed_service_and_runs_its_hooks(tmp_path: Path) -> None:
    service = _Sleeper(tmp_path / "sleeper.log")
    service.start()
    hooks: list[str] = []

    async def before() -> None:
        hooks.append("before")

    async def after() -> None:
        hooks.append("after")

    watch = ServiceWatch("sleeper", service, before_restart=before, after_restart=after)
    watch.backoff = Backoff(0.1, 0.1, healthy_after_s=60.0)
    await watch.check()
    assert service.starts == 1  # alive: nothing to do
    assert service.proc is not None
    first = service.proc.pid
    service.proc.kill()
    deadline = time.monotonic() + 30
    while watch.restarts == 0 and time.monotonic() < deadline:
        await watch.check()
        await asyncio.sleep(0.05)
    assert watch.restarts == 1
    assert service.starts == 2
    assert service.proc is not None
    assert service.proc.alive()
    assert service.proc.pid != first
    assert hooks == ["before", "after"]
    service.proc.stop()


async def test_stack_restart_delay_resets_after_a_healthy_run(tmp_path: Path) -> None:
    # A component that runs healthy for a while, then dies, again and again: each restart comes after
    # the first, shortest delay, never one grown by earlier, long-past crashes.
    stack = DevStack(DevSettings(state_dir=tmp_path / "state", kafka_max_rss_mb=0))
    code = "import time, sys; time.sleep(1.0); sys.exit(3)"
    proc = ChildProcess("crasher", [sys.executable, "-c", code], log_path=tmp_path / "crasher.log")
    comp = Component("crasher", None, proc, backoff=Backoff(0.1, 30.0, factor=300.0, healthy_after_s=0.5))
    stack.components.append(comp)
    comp.start()
    supervisor = asyncio.create_task(stack.supervise())
    try:
        await eventually(lambda: comp.restarts >= 3, 60, "three restarts")
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        comp.proc.stop()
    assert comp.restarts >= 3
    assert comp.backoff.failures == 1
