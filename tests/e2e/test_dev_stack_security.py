"""``cityingest dev`` is secured by default: TLS only, no anonymous clients, the bridge on TLS with its own
account, and a ready ``mosquitto_pub`` command with a credential the API issued; ``--insecure-mqtt``
adds a plain anonymous listener for experiments."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from devstack.dynsec import run_commands
from devstack.mosquitto import DYNSEC_ADMIN
from tests.e2e.test_dev_stack import COUNT_SQL_BY_DEVICE, DevRun, _listening, _wait_count, state_dir
from tests.secured_broker import device_commands

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

__all__ = ["state_dir"]  # the fixture, shared with test_dev_stack

PRIVATE = (
    "ca/ca.key",
    "ca/server.key",
    "mqtt-admin-password",
    "mqtt-bridge-password",
    "dev-api-key",
    "mosquitto/dynamic-security.json",
    "mosquitto/tls-server.key",
)


def _pub(
    *args: str, message: str = '{"metric": "water_flow", "value": 2.5}'
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mosquitto_pub", *args, "-q", "1", "-m", message],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def _add_device_as_admin(run: DevRun, device: str, password: str) -> str:
    """A device account made directly through the broker's admin (not the API), for the bridge's TLS path."""
    topic = f"city/water/{device}/telemetry"
    admin = (run.state_dir / "mqtt-admin-password").read_text(encoding="utf-8").strip()
    ca = run.state_dir / "ca" / "ca.pem"
    # Not marked as the API's: the dev stack's API reconciles its own accounts and would remove it.
    commands = device_commands(device, password, topic, textname=None)
    run_commands("127.0.0.1", run.ports["mqtt"], ca, admin, commands)
    return topic


def _latest(api: str, key: str, device: str) -> list[dict[str, Any]]:
    """The device's newest reading per metric, through the API."""
    request = urllib.request.Request(  # noqa: S310 - loopback test URL
        f"{api}/v1/devices/{device}/latest", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback test URL
        doc = json.load(response)
    assert doc["device_id"] == device
    metrics: list[dict[str, Any]] = doc["metrics"]
    return metrics


def test_the_default_stack_speaks_tls_with_credentials_only(state_dir: Path) -> None:
    run = DevRun(state_dir, "--no-simulator")
    run.wait_running()
    try:
        ca = str(state_dir / "ca" / "ca.pem")
        port = str(run.ports["mqtt"])
        topic = "city/water/intruder-1/telemetry"
        assert f"mqtts://127.0.0.1:{port}" in run.text()
        # No plain listener; plaintext on the TLS port, anonymous clients and wrong passwords are refused.
        assert not _listening(run.ports["mqtt-plain"])
        assert "MQTT plain" not in run.text()
        assert _pub("-p", port, "-t", topic).returncode != 0
        anonymous = _pub("-p", port, "--cafile", ca, "-t", topic)
        assert anonymous.returncode != 0
        assert "not authori" in anonymous.stderr.lower(), anonymous.stderr
        assert (
            _pub("-p", port, "--cafile", ca, "-u", "cityingest-bridge", "-P", "guess", "-t", topic).returncode
            != 0
        )
        # Secrets and keys are readable by their owner only.
        for name in PRIVATE:
            assert (state_dir / name).stat().st_mode & 0o777 == 0o600, name

        # The bridge reads over TLS with its own account: a device's readings reach the store.
        device, password = f"tls-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
        own_topic = _add_device_as_admin(run, device, password)
        lines = [
            f'{{"metric": "water_flow", "value": {i}.5, "ts": "2026-11-03T00:{i // 60:02d}:{i % 60:02d}Z"}}'
            for i in range(100)
        ]
        login = ["-p", port, "--cafile", ca, "-u", device, "-P", password, "-i", device]
        published = subprocess.run(
            ["mosquitto_pub", *login, "-q", "1", "-t", own_topic, "-l"],
            input="\n".join(lines) + "\n",
            text=True,
            capture_output=True,
            check=False,
            timeout=60,
        )
        assert published.returncode == 0, published.stderr
        assert _wait_count(run.dsn, COUNT_SQL_BY_DEVICE, 100, 60, device) == 100
        assert re.search(
            r"connected to MQTT 127\.0\.0\.1:\d+ as cityingest-bridge-",
            (state_dir / "logs" / "bridge.log").read_text(),
        )
        # The admin password is never on a command line the stack started, nor in its output.
        admin = (state_dir / "mqtt-admin-password").read_text(encoding="utf-8").strip()
        assert admin not in run.text()
        assert DYNSEC_ADMIN in (state_dir / "mosquitto" / "dynamic-security.json").read_text()

        # Needs the credentials API (`POST /v1/devices/{id}/credentials`): the printed command works as
        # pasted, and its reading is found through the API.
        printed = re.search(r"^\s+(mosquitto_pub .+)$", run.text(), re.MULTILINE)
        assert printed, run.text()
        argv = shlex.split(printed.group(1))
        assert {"--cafile", "-p", "-u", "-P", "-i", "-t", "-q", "-m"} <= set(argv)
        pasted = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        assert pasted.returncode == 0, pasted.stderr
        demo = argv[argv.index("-u") + 1]
        key = (state_dir / "dev-api-key").read_text(encoding="utf-8").strip()
        assert _wait_count(run.dsn, COUNT_SQL_BY_DEVICE, 1, 60, demo) >= 1
        latest = _latest(f"http://127.0.0.1:{run.ports['api']}", key, demo)
        assert any(item["metric"] == "water_flow" and item["value"] == 12.5 for item in latest), latest
    finally:
        assert run.stop(signal.SIGINT) == 0, run.text()


def test_insecure_mqtt_adds_a_plain_anonymous_listener(state_dir: Path) -> None:
    run = DevRun(state_dir, "--no-simulator", "--insecure-mqtt")
    run.wait_running()
    try:
        plain = str(run.ports["mqtt-plain"])
        assert f"mqtt://127.0.0.1:{plain}" in run.text()
        device = f"exp-{uuid.uuid4().hex[:6]}"
        assert _pub("-p", plain, "-t", f"city/water/{device}/telemetry").returncode == 0
        assert _wait_count(run.dsn, COUNT_SQL_BY_DEVICE, 1, 60, device) == 1
        # Anonymous clients still cannot read what devices send.
        sub = subprocess.run(
            ["mosquitto_sub", "-p", plain, "-t", "city/#", "-V", "mqttv5", "-W", "2"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert "denied" in (sub.stdout + sub.stderr).lower(), sub
        # The TLS listener is there as well.
        assert _listening(run.ports["mqtt"])
    finally:
        assert run.stop(signal.SIGINT) == 0, run.text()
