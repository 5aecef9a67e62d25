"""``cityingest dev`` as a user meets it: ready when it says so, the same ports and key after a restart,
and ``cityingest apikey`` finding its database from the same directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_dev_stack import DevRun, _processes_mentioning

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / ".cityingest"
    yield path
    for line in _processes_mentioning(str(path)):
        os.kill(int(line.split(":")[0]), signal.SIGKILL)


def _status(url: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback test URL
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback test URL
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def _banner_key(run: DevRun) -> str:
    match = re.search(r"API key\s+(\S+)", run.text())
    assert match, run.text()
    return match.group(1)


def test_ready_banner_stable_key_same_ports_and_cli(state_dir: Path) -> None:
    first = DevRun(state_dir, "--no-simulator")
    first.wait_running()
    try:
        # The banner comes only once every component is ready, not merely alive.
        for url in re.findall(r"(http://127\.0\.0\.1:\d+)/metrics", first.text()):
            assert _status(f"{url}/readyz") == 200, first.text()
        api = f"http://127.0.0.1:{first.ports['api']}"
        key = _banner_key(first)
        assert _status(f"{api}/v1/devices", key) == 200

        # `cityingest apikey` run from the directory that holds the state finds the dev database.
        env = {k: v for k, v in os.environ.items() if k != "CITYINGEST_DATABASE_URL"}
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "apikey",
                "create",
                "--name",
                "city-dashboard",
                "--scope",
                "metrics:read",
            ],
            cwd=state_dir.parent,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        assert _status(f"{api}/v1/devices", created.stdout.strip()) == 200
    finally:
        assert first.stop(signal.SIGINT) == 0, first.text()

    # Right away again, on the same (explicitly chosen) ports: TIME_WAIT sockets do not count as busy.
    second = DevRun(state_dir, "--no-simulator", ports=first.ports)
    second.wait_running()
    try:
        assert "is in use" not in second.text()
        assert _banner_key(second) == key
        assert _status(f"http://127.0.0.1:{first.ports['api']}/v1/devices", key) == 200
    finally:
        assert second.stop(signal.SIGTERM) == 0, second.text()
    assert not (state_dir / "dev-stack.json").exists()
    assert _processes_mentioning(str(state_dir)) == []
