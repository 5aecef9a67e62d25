"""``cityingest dev`` under service crashes: kill -9 of Mosquitto or PostgreSQL, the stack restarts it.

Mosquitto is killed while the bridge is behind (SIGSTOPped, so the broker holds the backlog): what the
broker acknowledged before its last save (the chosen loss window, docs/operations.md) must survive, as
must that backlog when an outsider connects with every client id of the bridge it can work out.

Readings go to the plain anonymous listener of ``--insecure-mqtt``: these tests are about crashes, not
devices' credentials (tests/e2e/test_dev_stack_security.py); the anonymous outsider is the worst case.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from devstack.postgres import PG_BIN
from ingest.settings import guessable_client_id
from tests.e2e.test_dev_stack import DevRun, _wait_count, state_dir
from tests.ingest.support import connect_clean

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

__all__ = ["state_dir"]  # the fixture, shared with test_dev_stack

LOSS_WINDOW_S = 2.0
TANSU = "--storage-engine memory:"  # its command line (the test paths contain "tansu" too)
COUNT_SQL = "SELECT count(*) FROM readings WHERE device_id = $1"


def _children(pid: int) -> dict[int, str]:
    """Direct children of ``pid`` and their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found[int(entry.name)] = cmdline
    return found


def _child(run: DevRun, needle: str, not_pid: int | None = None, within_s: float = 60) -> int:
    """The pid of the stack's child process whose command line contains ``needle`` (a new one if
    ``not_pid`` is given), waiting for it to appear."""
    assert run.proc is not None
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for pid, cmdline in _children(run.proc.pid).items():
            if needle in cmdline and pid != not_pid:
                return pid
        time.sleep(0.2)
    pytest.fail(f"no process {needle!r} under the stack after {within_s}s:\n{run.text()}")


def _publish(run: DevRun, device: str, count: int, within_s: float = 60) -> None:
    """Publish ``count`` readings of ``device`` at QoS 1, retrying until the broker takes them all."""
    lines = [
        f'{{"metric": "water_flow", "value": {i}.25, "ts": "2026-11-02T{clock}Z"}}'
        for i, clock in ((i, f"{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}") for i in range(count))
    ]
    deadline = time.monotonic() + within_s
    while True:
        pub = subprocess.run(
            [
                "mosquitto_pub",
                "-p",
                str(run.ports["mqtt-plain"]),
                "-q",
                "1",
                "-t",
                f"city/water/{device}/telemetry",
                "-l",
            ],
            input="\n".join(lines) + "\n",
            text=True,
            capture_output=True,
            check=False,
        )
        if pub.returncode == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"mosquitto_pub kept failing: {pub.stderr}\n{run.text()}")
        time.sleep(0.5)


def _stored(run: DevRun, device: str, count: int, within_s: float = 120) -> int:
    """The readings of ``device`` in the store once there are ``count`` (or the deadline passed);
    the store may still be recovering from a crash meanwhile."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return _wait_count(run.dsn, COUNT_SQL, count, max(deadline - time.monotonic(), 0.1), device)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_mosquitto_killed_behind_a_backlog_is_restarted_and_loses_nothing_saved(state_dir: Path) -> None:
    run = DevRun(state_dir, "--no-simulator", "--insecure-mqtt")
    run.wait_running()
    try:
        mosquitto = _child(run, "mosquitto.conf")
        bridge = _child(run, "cli bridge")
        # The bridge falls behind: everything published now waits in the broker, for its session.
        os.kill(bridge, signal.SIGSTOP)
        try:
            _publish(run, "backlog-1", 2000)
            # An outsider who tries every client id it can work out must not wipe the queued backlog.
            for guess in (guessable_client_id(socket.gethostname()), guessable_client_id("dev-bridge")):
                for protocol in (MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311):
                    assert connect_clean("127.0.0.1", run.ports["mqtt-plain"], guess, protocol=protocol)
            # Every PUBACK came before this point; once the loss window has passed (docs/operations.md:
            # 2 s with the dev broker's settings) the broker has saved them, and a crash loses none.
            time.sleep(LOSS_WINDOW_S + 0.5)
            os.kill(mosquitto, signal.SIGKILL)
        finally:
            os.kill(bridge, signal.SIGCONT)
        restarted = _child(run, "mosquitto.conf", not_pid=mosquitto)
        assert restarted != mosquitto
        assert _stored(run, "backlog-1", 2000) == 2000, run.text()
        # And devices can publish again, through the restarted broker to the store.
        _publish(run, "after-1", 100)
        assert _stored(run, "after-1", 100) == 100
        assert "Mosquitto died" in run.text()
    finally:
        assert run.stop(signal.SIGINT) == 0, run.text()


def test_postgres_killed_is_restarted_and_readings_flow_again(state_dir: Path) -> None:
    run = DevRun(state_dir, "--no-simulator", "--insecure-mqtt")
    run.wait_running()
    try:
        _publish(run, "before-pg", 50)
        assert _stored(run, "before-pg", 50) == 50
        postmaster = _child(run, str(PG_BIN / "postgres"))
        os.kill(postmaster, signal.SIGKILL)
        restarted = _child(run, str(PG_BIN / "postgres"), not_pid=postmaster)
        assert restarted != postmaster
        _publish(run, "after-pg", 100)
        assert _stored(run, "after-pg", 100) == 100, run.text()
        assert _stored(run, "before-pg", 50) == 50
        assert "PostgreSQL died" in run.text()
    finally:
        assert run.stop(signal.SIGINT) == 0, run.text()


def test_tansu_killed_is_restarted_with_its_topics_and_readings_flow_again(state_dir: Path) -> None:
    run = DevRun(state_dir, "--no-simulator", "--insecure-mqtt")
    run.wait_running()
    try:
        _publish(run, "before-tansu", 50)
        assert _stored(run, "before-tansu", 50) == 50
        tansu = _child(run, TANSU)
        os.kill(tansu, signal.SIGKILL)
        restarted = _child(run, TANSU, not_pid=tansu)
        assert restarted != tansu
        # The new, empty topics start at offset 0: the consumers must read them from there.
        _publish(run, "after-tansu", 100)
        assert _stored(run, "after-tansu", 100) == 100, run.text()
        assert "Tansu died" in run.text()
        assert "LOST" in run.text()  # said loudly: unapplied records of a memory-only broker are gone
    finally:
        assert run.stop(signal.SIGINT) == 0, run.text()
