"""docker-compose.yml, offline: the Compose Specification schema, and what issue 7 asks of the stack."""

from __future__ import annotations

import copy
import importlib
import os
import re
import shlex
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from api.settings import ApiSettings
from cli.flags import settings_from_args
from cli.main import build_parser
from consumers.settings import ConsumerSettings
from core.settings import ENV_PREFIX
from ingest.settings import BridgeSettings, derive_client_id
from tests.deploy.compose import (
    MissingVariable,
    compose_schema_validator,
    interpolate,
    interpolate_string,
    schema_errors,
)

REPO: Final = Path(__file__).resolve().parents[2]
REQUIRED_SECRETS: Final = {"POSTGRES_PASSWORD", "MQTT_BRIDGE_PASSWORD", "MQTT_CLIENT_ID_SECRET"}
ENV: Final = {
    "POSTGRES_PASSWORD": "pg-secret",
    "MQTT_BRIDGE_PASSWORD": "mqtt-secret",
    "MQTT_CLIENT_ID_SECRET": "0123456789abcdef" * 4,
    "KAFKA_PARTITIONS": "12",
}
ONE_SHOT: Final = {"migrate", "kafka-topics"}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """docker-compose.yml as written (YAML anchors and merges resolved, variables not)."""
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """docker-compose.yml after interpolation with the required secrets and 12 partitions."""
    resolved: dict[str, Any] = interpolate(raw, ENV)
    return resolved


def services_running(compose: dict[str, Any], command: str) -> dict[str, dict[str, Any]]:
    """The services whose cityingest command is ``command``."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("image", "").startswith("cityingest:") and svc["command"][0] == command
    }


def settings_of(
    service: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[str, BaseSettings, list[str]]:
    """Parse a cityingest service's command with the real CLI, under its environment only."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in service.get("environment", {}).items():
        monkeypatch.setenv(key, str(value))
    args = build_parser().parse_args(service["command"])
    spec = args.command_spec
    module, _, attr = spec.settings.partition(":")
    model = getattr(importlib.import_module(module), attr)
    return spec.name, settings_from_args(model, args), service["command"]


def test_interpolation_follows_the_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate_string("$$SYS ${SET} $SET ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d}", env) == "$SYS x x d d "
    assert interpolate_string("${SET:?m}${SET:+alt}${UNSET:+alt}", env) == "xalt"
    with pytest.raises(MissingVariable, match="EMPTY: m"):
        interpolate_string("${EMPTY:?m}", env)


def test_schema_valid_as_written_and_interpolated(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    validator = compose_schema_validator()
    assert schema_errors(validator, raw) == []
    assert schema_errors(validator, compose) == []


def test_schema_catches_mistakes(raw: dict[str, Any]) -> None:
    validator = compose_schema_validator()
    broken = copy.deepcopy(raw)
    broken["services"]["api"]["healthchek"] = broken["services"]["api"].pop("healthcheck")
    broken["services"]["migrate"]["depends_on"]["timescaledb"]["condition"] = "service_ready"
    errors = schema_errors(validator, broken)
    assert any("healthchek" in e for e in errors), errors
    assert any("service_ready" in e for e in errors), errors


@pytest.mark.parametrize("secret", sorted(REQUIRED_SECRETS))
def test_required_secrets_fail_fast(raw: dict[str, Any], secret: str) -> None:
    env = {k: v for k, v in ENV.items() if k != secret}
    with pytest.raises(MissingVariable) as caught:
        interpolate(raw, env)
    assert caught.value.name == secret
    with pytest.raises(MissingVariable):
        interpolate(raw, {**env, secret: ""})


def test_every_secret_is_required(raw: dict[str, Any]) -> None:
    text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{([A-Z_]*(?:PASSWORD|SECRET)[A-Z_]*)", text))
    assert used == REQUIRED_SECRETS
    for name in used:
        assert re.findall(rf"\$\{{{name}([^}}]*)\}}", text), name
        assert all(rest.startswith(":?") for rest in re.findall(rf"\$\{{{name}([^}}]*)\}}", text)), name
    # No secret value is written into the file itself.
    for svc in raw["services"].values():
        for key, value in svc.get("environment", {}).items():
            if "PASSWORD" in key or "SECRET" in key:
                assert str(value).count("${") >= 1, key


def test_healthchecks_and_dependency_conditions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc["restart"] == "no", name
        else:
            assert svc["restart"] == "unless-stopped", name
            assert svc["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
        for dep, spec in svc.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec == {"condition": expected}, (name, dep)
    for name in ("bridge-1", "bridge-2", "consumer-1", "consumer-2", "api"):
        assert services[name]["depends_on"], name
    # The database writers wait for the schema, the Kafka users for the topics.
    for name in ("consumer-1", "consumer-2", "api"):
        assert "migrate" in services[name]["depends_on"], name
    for name in ("bridge-1", "bridge-2", "consumer-1", "consumer-2"):
        assert "kafka-topics" in services[name]["depends_on"], name


def test_our_healthchecks_probe_readyz_on_the_served_port(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if not svc.get("image", "").startswith("cityingest:") or name in ONE_SHOT:
            continue
        command = svc["command"]
        flag = "--api-port" if command[0] == "api" else "--http-port"
        port = command[command.index(flag) + 1]
        probe = " ".join(svc["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in probe, name


def test_every_command_parses_with_the_real_cli(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = set()
    for name, svc in compose["services"].items():
        if svc.get("image", "").startswith("cityingest:"):
            command, _, _ = settings_of(svc, monkeypatch)
            commands.add(command)
            assert svc["build"] == ".", name
    assert commands == {"migrate", "bridge", "consume", "api"}


def test_two_bridges_share_one_subscription(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    bridges = services_running(compose, "bridge")
    assert len(bridges) == 2
    settings = [settings_of(svc, monkeypatch)[1] for svc in bridges.values()]
    assert all(isinstance(s, BridgeSettings) for s in settings)
    bridge_settings = [s for s in settings if isinstance(s, BridgeSettings)]
    groups = {s.shared_group for s in bridge_settings}
    assert len(groups) == 1
    assert None not in groups
    # Distinct MQTT client ids: a second connection with the same id would kick the first off.
    assert len({s.client_id for s in bridge_settings}) == 2
    # Derived from the secret, so no device can connect with one and wipe that bridge's queue.
    for s in bridge_settings:
        assert s.client_id == derive_client_id(s.bridge_id, ENV["MQTT_CLIENT_ID_SECRET"])
    assert len({s.bridge_id for s in bridge_settings}) == 2
    for s in bridge_settings:
        assert s.mqtt_username == "bridge"
        assert s.mqtt_password == ENV["MQTT_BRIDGE_PASSWORD"]
        assert s.kafka_idempotence is True  # real Kafka


def test_two_consumers_in_one_group(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    consumers = services_running(compose, "consume")
    assert len(consumers) == 2
    settings = [settings_of(svc, monkeypatch)[1] for svc in consumers.values()]
    assert all(isinstance(s, ConsumerSettings) for s in settings)
    consumer_settings = [s for s in settings if isinstance(s, ConsumerSettings)]
    assert len({s.group_id for s in consumer_settings}) == 1
    assert len({s.consumer_id for s in consumer_settings}) == 2
    for s in consumer_settings:
        assert s.commit_to_kafka is True  # lag tools (and KEDA) read the Kafka commits


def test_the_dashboard_reads_every_bridge_and_consumer_on_its_port(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, api, _ = settings_of(compose["services"]["api"], monkeypatch)
    assert isinstance(api, ApiSettings)
    configured = {(t.name, t.host, t.port, t.discover) for t in api.ops_components}
    served = set()
    for name, svc in {**services_running(compose, "bridge"), **services_running(compose, "consume")}.items():
        _, settings, _ = settings_of(svc, monkeypatch)
        assert isinstance(settings, BridgeSettings | ConsumerSettings)
        # Listening on loopback only, a component would be out of the API container's reach.
        assert settings.http_host == "0.0.0.0", name  # noqa: S104 - the compose file's listen address
        # Compose names each container's address after its service.
        served.add((name, name, settings.http_port, False))
    assert len(served) == 4
    assert configured == served


def test_topics_created_with_the_configured_partitions(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    script = compose["services"]["kafka-topics"]["command"][-1]
    creations = [shlex.split(part) for part in script.split("&&")]
    partitions = {
        argv[argv.index("--topic") + 1]: int(argv[argv.index("--partitions") + 1]) for argv in creations
    }
    assert set(partitions) == {"readings", "readings.dlq"}
    assert partitions["readings"] == int(ENV["KAFKA_PARTITIONS"])
    for name, svc in compose["services"].items():
        if svc.get("image", "").startswith("cityingest:"):
            _, settings, _ = settings_of(svc, monkeypatch)
            assert getattr(settings, "kafka_partitions", 12) == 12, name
            assert getattr(settings, "readings_topic", "readings") == "readings", name


def test_migrate_passes_the_storage_policy_ages(compose: dict[str, Any]) -> None:
    env = {**ENV, "RAW_RETENTION_DAYS": "30", "COMPRESS_AFTER_DAYS": "2"}
    resolved = interpolate(yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8")), env)
    url = urlsplit(resolved["services"]["migrate"]["environment"]["CITYINGEST_DATABASE_URL"])
    assert parse_qs(url.query) == {
        "cityingest.raw_retention_days": ["30"],
        "cityingest.compress_after_days": ["2"],
    }
    for name in ("consumer-1", "consumer-2"):
        assert resolved["services"][name]["environment"]["CITYINGEST_RETENTION_DAYS"] == "30"
    # Only the migration carries them: the other services' DSN has no query.
    assert urlsplit(compose["services"]["api"]["environment"]["CITYINGEST_DATABASE_URL"]).query == ""


def test_infrastructure_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    for svc in services.values():
        image = svc["image"]
        if not image.startswith("cityingest:"):
            assert not image.endswith(":latest"), image
            assert ":" in image, image
    # KRaft: the broker is its own controller, no ZooKeeper anywhere.
    kafka_env = services["kafka"]["environment"]
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "zookeeper" not in yaml.safe_dump(compose).lower()
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    # Mosquitto runs our entrypoint, which builds its password file from the secrets.
    mosquitto = services["mosquitto"]
    assert mosquitto["entrypoint"] == ["/etc/cityingest/entrypoint.sh"]
    assert "./deploy/mosquitto:/etc/cityingest:ro" in mosquitto["volumes"]
