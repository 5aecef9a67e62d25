"""What ``cityingest dev`` prints about MQTT: the TLS listeners, --insecure-mqtt's plain one, and a
``mosquitto_pub`` command that a shell runs as printed."""

from __future__ import annotations

import shlex
from pathlib import Path

from devstack.demo import DEMO_PAYLOAD, DemoDevice
from devstack.settings import DevSettings
from devstack.stack import DevStack


def test_the_banner_shows_a_pasteable_mosquitto_pub_command(tmp_path: Path) -> None:
    stack = DevStack(DevSettings(state_dir=tmp_path))
    stack.endpoints.mqtt = "mqtts://127.0.0.1:8883"
    stack.demo = DemoDevice(
        device_id="demo-meter-1",
        client_id="demo-meter-1",
        username="demo-meter-1",
        password="p'a ss$word",  # noqa: S106 - a test value that needs quoting
        topic="city/water/demo-meter-1/telemetry",
        ca_file=tmp_path / "ca dir" / "ca.pem",
        port=8883,
    )
    banner = stack.describe()
    assert "MQTT plain" not in banner
    line = next(line for line in banner.splitlines() if line.strip().startswith("mosquitto_pub "))
    argv = shlex.split(line)
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert options["--cafile"] == str(tmp_path / "ca dir" / "ca.pem")
    assert (options["-p"], options["-u"], options["-i"]) == ("8883", "demo-meter-1", "demo-meter-1")
    assert options["-P"] == "p'a ss$word"
    assert (options["-t"], options["-q"], options["-m"]) == (
        "city/water/demo-meter-1/telemetry",
        "1",
        DEMO_PAYLOAD,
    )


def test_the_banner_says_why_there_is_no_command_and_shows_the_plain_listener(tmp_path: Path) -> None:
    stack = DevStack(DevSettings(state_dir=tmp_path, insecure_mqtt=True))
    stack.endpoints.mqtt_plain = "mqtt://127.0.0.1:1883"
    stack.demo = "POST /v1/devices/demo-meter-1/credentials answered 503: ..."
    banner = stack.describe()
    assert "MQTT plain  mqtt://127.0.0.1:1883" in banner
    assert "No demo device credential: POST /v1/devices/demo-meter-1/credentials answered 503" in banner
    assert "mosquitto_pub" not in banner
