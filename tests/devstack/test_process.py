"""Child processes never outlive the process that started them, even when it is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.process import ChildProcess, free_port, port_is_free

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
