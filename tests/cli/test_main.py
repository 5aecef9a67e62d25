"""The ``cityingest`` command line: every command has --help, settings come from env and flags."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli.flags import settings_from_args
from cli.main import COMMANDS, _load, build_parser
from core.errors import ConfigError
from core.settings import MqttSettings

REQUIRED = {"dev", "bridge", "consume", "api", "migrate", "simulate"}


def test_every_required_command_exists() -> None:
    assert {c.name for c in COMMANDS} >= REQUIRED


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_help_lists_every_setting_with_its_variable(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", command, "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    spec = next(c for c in COMMANDS if c.name == command)
    for field in _load(spec.settings).model_fields:
        assert f"--{field.replace('_', '-')}" in result.stdout
        assert f"CITYINGEST_{field.upper()}" in result.stdout


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYINGEST_MQTT_PORT", "1999")
    monkeypatch.setenv("CITYINGEST_MQTT_HOST", "broker.example")
    monkeypatch.setenv("CITYINGEST_DOMAINS", "water,power")
    args = build_parser().parse_args(["bridge", "--mqtt-port", "2888"])
    settings = settings_from_args(MqttSettings, args)
    assert settings.mqtt_port == 2888
    assert settings.mqtt_host == "broker.example"
    assert settings.domains == ("water", "power")


def test_boolean_flags_have_a_negative_form() -> None:
    args = build_parser().parse_args(["dev", "--no-simulator"])
    assert args.simulator is False


def test_invalid_setting_is_a_clear_error() -> None:
    args = build_parser().parse_args(["bridge", "--mqtt-port", "not-a-port"])
    with pytest.raises(ConfigError, match="--mqtt-port"):
        settings_from_args(MqttSettings, args)


def test_invalid_setting_exits_nonzero_with_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "migrate", "--database-url", "postgresql://nobody@127.0.0.1:1/x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "cityingest migrate:" in result.stderr
    assert "Traceback" not in result.stderr
