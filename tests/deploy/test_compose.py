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
REQUIRED_SECRETS: Final = {
    "POSTGRES_PASSWORD",
    "MQTT_ADMIN_PASSWORD",
    "MQTT_BRIDGE_PASSWORD",
    "MQTT_CLIENT_ID_SECRET",
}
# The TLS files, each a Compose secret: (variable, secret name).
TLS_FILES: Final = {
    "MQTT_SERVER_CERT_FILE": "mqtt_server_cert",
    "MQTT_SERVER_KEY_FILE": "mqtt_server_key",
    "MQTT_SERVER_CA_FILE": "mqtt_server_ca",
    "MQTT_DEVICE_CA_FILE": "mqtt_device_ca",
    "MQTT_DEVICE_CA_KEY_FILE": "mqtt_device_ca_key",
}
ENV: Final = {
    "POSTGRES_PASSWORD": "pg-secret",
    "MQTT_ADMIN_PASSWORD": "admin-secret",
    "MQTT_BRIDGE_PASSWORD": "mqtt-secret",
    "MQTT_CLIENT_ID_SECRET": "0123456789abcdef" * 4,
    "MQTT_HOSTNAME": "mqtt.city.example",
    **{var: f"/secure/{name}.pem" for var, name in TLS_FILES.items()},
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


@pytest.mark.parametrize("secret", sorted(REQUIRED_SECRETS | set(TLS_FILES) | {"MQTT_HOSTNAME"}))
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
        assert s.mqtt_username == "cityingest-bridge"
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
    # Mosquitto runs our entrypoint, which bootstraps dynamic security from the secrets.
    mosquitto = services["mosquitto"]
    assert mosquitto["entrypoint"] == ["/etc/cityingest/entrypoint.sh"]
    assert "./deploy/mosquitto:/etc/cityingest:ro" in mosquitto["volumes"]
    assert "mqttdata:/mosquitto/data" in mosquitto["volumes"]  # the dynamic security state persists


def mosquitto_conf() -> dict[str, list[str]]:
    """deploy/mosquitto's configuration (with the optional listener) as option -> values, in order."""
    options: dict[str, list[str]] = {}
    for name in ("mosquitto.conf", "client-cert-listener.conf"):
        for line in (REPO / "deploy" / "mosquitto" / name).read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition(" ")
                options.setdefault(key, []).append(value)
    return options


def test_mqtt_is_tls_only(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    conf = mosquitto_conf()
    assert conf["listener"] == ["8883", "8884"]
    # Every listener has its certificate, key and CA and takes TLS 1.2 at least.
    for option in ("certfile", "keyfile", "cafile", "tls_version", "require_certificate"):
        assert len(conf[option]) == len(conf["listener"]), option
    assert set(conf["tls_version"]) == {"tlsv1.2"}
    assert conf["require_certificate"] == ["false", "true"]
    assert conf["use_identity_as_username"] == ["true"]
    assert conf["allow_anonymous"] == ["false"]
    assert conf["per_listener_settings"] == ["false"]
    # Published: only the TLS listeners; nothing anywhere speaks MQTT in clear text.
    mosquitto = compose["services"]["mosquitto"]
    assert sorted(port.rsplit(":", 1)[1] for port in mosquitto["ports"]) == ["8883", "8884"]
    assert "1883" not in yaml.safe_dump(compose)
    assert "1883" not in "".join(
        (REPO / "deploy" / "mosquitto" / name).read_text(encoding="utf-8")
        for name in ("mosquitto.conf", "client-cert-listener.conf", "entrypoint.sh")
    )
    for name, svc in services_running(compose, "bridge").items():
        _, settings, _ = settings_of(svc, monkeypatch)
        assert isinstance(settings, BridgeSettings)
        assert (settings.mqtt_host, settings.mqtt_port, settings.mqtt_tls) == (
            ENV["MQTT_HOSTNAME"],
            8883,
            True,
        ), name
    # The API reaches the broker (dynamic security) with the same settings (core MqttSettings).
    api_env = compose["services"]["api"]["environment"]
    for key, value in compose["services"]["bridge-1"]["environment"].items():
        if key.startswith("CITYINGEST_MQTT_") and key not in {
            "CITYINGEST_MQTT_USERNAME",
            "CITYINGEST_MQTT_PASSWORD",
            "CITYINGEST_MQTT_CLIENT_ID_SECRET",
        }:
            assert api_env[key] == value, key
    # The bridges and the API reach the broker by the name in its certificate: an alias of the service.
    assert mosquitto["networks"]["default"]["aliases"] == [ENV["MQTT_HOSTNAME"]]


def test_tls_files_come_from_secrets(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    conf = mosquitto_conf()
    entrypoint = (REPO / "deploy" / "mosquitto" / "entrypoint.sh").read_text(encoding="utf-8")
    # The broker reads the copies the entrypoint makes of the secrets mqtt_server_cert, mqtt_server_key
    # and mqtt_device_ca (its own user must be able to read them).
    copies = {
        "server.crt": "mqtt_server_cert",
        "server.key": "mqtt_server_key",
        "device-ca.crt": "mqtt_device_ca",
    }
    for option in ("certfile", "keyfile", "cafile"):
        for path in conf[option]:
            name = path.removeprefix("/mosquitto/config/tls/")
            assert name in copies, path
            assert f"{copies[name]}:{name}" in entrypoint
    assert "secrets=${MQTT_SECRETS_DIR:-/run/secrets}" in entrypoint
    # Each is a file secret named by a required variable, never a path or content in the file.
    for var, name in TLS_FILES.items():
        assert raw["secrets"][name]["file"].startswith(f"${{{var}:?"), name
        assert compose["secrets"][name] == {"file": ENV[var]}
    services = compose["services"]
    assert set(services["mosquitto"]["secrets"]) == {
        "mqtt_server_cert",
        "mqtt_server_key",
        "mqtt_server_ca",
        "mqtt_device_ca",
    }
    assert set(services["api"]["secrets"]) == {"mqtt_server_ca", "mqtt_device_ca", "mqtt_device_ca_key"}
    for name in ("bridge-1", "bridge-2"):
        assert services[name]["secrets"] == ["mqtt_server_ca"]
    # Every file path a service is given is one of its mounted secrets.
    for name, svc in services.items():
        for key, value in svc.get("environment", {}).items():
            if str(value).startswith("/run/secrets/"):
                assert str(value).removeprefix("/run/secrets/") in svc["secrets"], (name, key)


def test_dynamic_security_replaces_the_password_file() -> None:
    conf = mosquitto_conf()
    assert conf["plugin"] == ["/usr/lib/mosquitto_dynamic_security.so"]  # the eclipse-mosquitto image's
    assert conf["plugin_opt_config_file"] == ["/mosquitto/data/dynamic-security.json"]
    for gone in ("password_file", "acl_file", "psk_file"):
        assert gone not in conf
    assert not (REPO / "deploy" / "mosquitto" / "acl").exists()
    assert not (REPO / "deploy" / "mosquitto" / "devices.example").exists()


def test_api_and_bridges_follow_the_contract(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    api_env = services["api"]["environment"]
    assert api_env["CITYINGEST_DYNSEC_ENABLED"] == "true"
    assert api_env["CITYINGEST_DYNSEC_USERNAME"] == "cityingest-admin"
    assert api_env["CITYINGEST_DYNSEC_PASSWORD"] == ENV["MQTT_ADMIN_PASSWORD"]
    assert api_env["CITYINGEST_DEVICE_CA_CERT_FILE"] == "/run/secrets/mqtt_device_ca"
    assert api_env["CITYINGEST_DEVICE_CA_KEY_FILE"] == "/run/secrets/mqtt_device_ca_key"
    # The API waits for the broker it provisions devices on.
    assert services["api"]["depends_on"]["mosquitto"] == {"condition": "service_healthy"}
    mosquitto_env = services["mosquitto"]["environment"]
    assert mosquitto_env["MQTT_ADMIN_PASSWORD"] == ENV["MQTT_ADMIN_PASSWORD"]
    assert mosquitto_env["MQTT_BRIDGE_PASSWORD"] == ENV["MQTT_BRIDGE_PASSWORD"]
    # Only the bridges hold the bridge's password; only the API and the broker the admin's.
    for name, svc in services.items():
        values = {str(v) for v in svc.get("environment", {}).values()}
        if name not in {"bridge-1", "bridge-2", "mosquitto"}:
            assert ENV["MQTT_BRIDGE_PASSWORD"] not in values, name
        if name not in {"api", "mosquitto"}:
            assert ENV["MQTT_ADMIN_PASSWORD"] not in values, name
    for svc in services_running(compose, "bridge").values():
        _, settings, _ = settings_of(svc, monkeypatch)
        assert isinstance(settings, BridgeSettings)
        assert settings.mqtt_ca_file == "/run/secrets/mqtt_server_ca"
