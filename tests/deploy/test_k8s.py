"""deploy/k8s, offline: kustomize renders base and overlay, every object validates against its schema,
and the objects agree with each other (selectors, names, secrets, partitions) and with the CLI."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml

from api.ops.config import parse_target
from cli.main import build_parser
from consumers.settings import ConsumerSettings

REPO: Final = Path(__file__).resolve().parents[2]
K8S: Final = REPO / "deploy" / "k8s"
KEDA_SCHEMA: Final = Path(__file__).resolve().parent / "schemas" / "keda-scaledobject-v1alpha1.json"
KUBERNETES_VERSION: Final = "1.30.0"
TARGETS: Final = ("base", "overlays/production")
WORKLOADS: Final = {"Deployment", "StatefulSet"}
_REF: Final = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def kustomize(target: Path) -> list[dict[str, Any]]:
    """The documents ``kubectl kustomize target`` renders (kubectl embeds kustomize)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with its embedded kustomize) is missing: `apt-get install kubectl`")
    result = subprocess.run(
        [kubectl, "kustomize", str(target)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The rendered base, then the rendered production overlay."""
    return kustomize(K8S / str(request.param))


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``)."""
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def pod_containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Init containers and containers of a workload's pod template."""
    spec = workload["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def config_data(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The data of the single ConfigMap."""
    data: dict[str, str] = only(docs, "ConfigMap")["data"]
    return data


def keda_validator() -> jsonschema.protocols.Validator:
    """A validator for the ScaledObject subset schema in tests/deploy/schemas."""
    schema = json.loads(KEDA_SCHEMA.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def k8s_errors(doc: dict[str, Any]) -> list[str]:
    """Schema violations of a built-in Kubernetes object (strict: unknown fields are errors)."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}"]
    return []


def test_every_object_validates_against_its_schema(rendered: list[dict[str, Any]]) -> None:
    errors: list[str] = []
    keda = keda_validator()
    for doc in rendered:
        if doc["apiVersion"].startswith("keda.sh/"):
            errors += [e.message for e in keda.iter_errors(doc)]
            # The behavior KEDA passes to the HPA it creates is a Kubernetes HPA behavior.
            behavior = (
                doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
            )
            if behavior is not None:
                errors += k8s_errors(
                    {
                        "apiVersion": "autoscaling/v2",
                        "kind": "HorizontalPodAutoscaler",
                        "metadata": {"name": "keda-behavior"},
                        "spec": {
                            "scaleTargetRef": doc["spec"]["scaleTargetRef"],
                            "maxReplicas": doc["spec"]["maxReplicaCount"],
                            "behavior": behavior,
                        },
                    }
                )
        else:
            errors += k8s_errors(doc)
    assert errors == []
    kinds = sorted({d["kind"] for d in rendered})
    for kind in ("ConfigMap", "Deployment", "StatefulSet", "PodDisruptionBudget", "ScaledObject"):
        assert kind in kinds


def test_schemas_catch_mistakes(rendered: list[dict[str, Any]]) -> None:
    api = copy.deepcopy(only(rendered, "Deployment", "cityingest-api"))
    api["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    assert k8s_errors(api)
    scaled = copy.deepcopy(only(rendered, "ScaledObject"))
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    assert list(keda_validator().iter_errors(scaled))
    scaled = copy.deepcopy(only(rendered, "ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "10"
    assert list(keda_validator().iter_errors(scaled))


def test_workloads_probe_limit_and_drop_privileges(rendered: list[dict[str, Any]]) -> None:
    workloads = [d for d in rendered if d["kind"] in WORKLOADS]
    assert {w["metadata"]["name"] for w in workloads} == {
        "cityingest-bridge",
        "cityingest-consumer",
        "cityingest-api",
    }
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod_containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
        for container in pod["containers"]:
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"]["port"] in ports
            # The served port is the probed one.
            args = container["args"]
            flag = "--api-port" if args[0] == "api" else "--http-port"
            assert int(args[args.index(flag) + 1]) == ports["http"]


def test_container_args_parse_with_the_real_cli(rendered: list[dict[str, Any]]) -> None:
    parser = build_parser()
    seen = set()
    for workload in (d for d in rendered if d["kind"] in WORKLOADS):
        for container in pod_containers(workload):
            assert container["image"].split("/")[-1].startswith("cityingest:")
            seen.add(parser.parse_args(container["args"]).command_spec.name)
    assert seen == {"migrate", "bridge", "consume", "api"}


def test_references_resolve(rendered: list[dict[str, Any]]) -> None:
    config = only(rendered, "ConfigMap")
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text(encoding="utf-8"))
    for workload in (d for d in rendered if d["kind"] in WORKLOADS):
        for container in pod_containers(workload):
            defined: set[str] = set()
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == config["metadata"]["name"]
                defined |= set(config["data"])
            for var in container.get("env", []):
                # $(VAR) expands only variables defined before it; an unknown one stays literal.
                for ref in _REF.findall(var.get("value", "")):
                    assert ref in defined, (container["name"], var["name"], ref)
                secret = var.get("valueFrom", {}).get("secretKeyRef")
                if secret is not None:
                    assert secret["name"] == example["metadata"]["name"]
                    assert secret["key"] in example["stringData"]
                defined.add(var["name"])


def test_selectors_and_targets_match(rendered: list[dict[str, Any]]) -> None:
    templates = {
        d["metadata"]["name"]: (d["kind"], d["spec"]["template"]["metadata"]["labels"])
        for d in rendered
        if d["kind"] in WORKLOADS
    }
    for workload in (d for d in rendered if d["kind"] in WORKLOADS):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    for doc in rendered:
        if doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
        elif doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
        else:
            continue
        matched = [n for n, (_, labels) in templates.items() if selector.items() <= labels.items()]
        assert len(matched) == 1, (doc["kind"], doc["metadata"]["name"], matched)
    assert {d["metadata"]["name"] for d in rendered if d["kind"] == "PodDisruptionBudget"} == set(templates)
    for doc in rendered:
        if doc["kind"] in {"HorizontalPodAutoscaler", "ScaledObject"}:
            ref = doc["spec"]["scaleTargetRef"]
            assert templates[ref["name"]][0] == ref["kind"]
    bridge = only(rendered, "StatefulSet", "cityingest-bridge")
    assert bridge["spec"]["serviceName"] == only(rendered, "Service", "cityingest-bridge")["metadata"]["name"]


def test_consumers_scale_on_lag_bounded_by_partitions(rendered: list[dict[str, Any]]) -> None:
    config = config_data(rendered)
    scaled = only(rendered, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "cityingest-consumer"
    partitions = int(config["CITYINGEST_KAFKA_PARTITIONS"])
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] == partitions
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["allowIdleConsumers"] == "false"
    assert config[meta["bootstrapServersFromEnv"]] == config["CITYINGEST_KAFKA_BOOTSTRAP"]
    assert config[meta["consumerGroupFromEnv"]] == ConsumerSettings.model_fields["group_id"].default
    assert config[meta["topicFromEnv"]] == "readings"
    # The HPA KEDA creates must be the only one on the consumers.
    hpas = [d for d in rendered if d["kind"] == "HorizontalPodAutoscaler"]
    assert [h["spec"]["scaleTargetRef"]["name"] for h in hpas] == ["cityingest-api"]
    assert hpas[0]["spec"]["minReplicas"] >= 2


def test_bridges_share_one_subscription_with_stable_client_ids(rendered: list[dict[str, Any]]) -> None:
    bridge = only(rendered, "StatefulSet", "cityingest-bridge")
    assert bridge["spec"]["replicas"] >= 2
    (container,) = bridge["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--shared-group") + 1] == "bridges"
    env = {v["name"]: v for v in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The client id is derived from the pod name (stable per replica) and a secret (unguessable):
    # no explicit, guessable id may override that derivation.
    assert env["CITYINGEST_BRIDGE_ID"]["value"] == "$(POD_NAME)"
    assert "CITYINGEST_CLIENT_ID" not in env
    ref = env["CITYINGEST_MQTT_CLIENT_ID_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "cityingest", "key": "mqtt-client-id-secret"}


def test_migrations_get_the_policy_ages(rendered: list[dict[str, Any]]) -> None:
    config = config_data(rendered)
    float(config["CITYINGEST_RETENTION_DAYS"])
    float(config["COMPRESS_AFTER_DAYS"])
    for name in ("cityingest-consumer", "cityingest-api"):
        (init,) = only(rendered, "Deployment", name)["spec"]["template"]["spec"]["initContainers"]
        assert init["args"] == ["migrate"]
        (url,) = [v["value"] for v in init["env"] if v["name"] == "CITYINGEST_DATABASE_URL"]
        assert "cityingest.raw_retention_days=$(CITYINGEST_RETENTION_DAYS)" in url
        assert "cityingest.compress_after_days=$(COMPRESS_AFTER_DAYS)" in url


def test_production_overlay_changes_what_it_should() -> None:
    base = kustomize(K8S / "base")
    prod = kustomize(K8S / "overlays/production")
    assert {d["metadata"].get("namespace") for d in prod if d["kind"] != "Namespace"} == {"cityingest"}
    assert only(prod, "Namespace")["metadata"]["name"] == "cityingest"
    assert int(config_data(prod)["CITYINGEST_KAFKA_PARTITIONS"]) > int(
        config_data(base)["CITYINGEST_KAFKA_PARTITIONS"]
    )
    # The overlay's partial patches keep everything of the base they do not name.
    for name in ("cityingest-bridge", "cityingest-consumer"):
        kind = "StatefulSet" if name == "cityingest-bridge" else "Deployment"
        base_c = only(base, kind, name)["spec"]["template"]["spec"]["containers"][0]
        prod_c = only(prod, kind, name)["spec"]["template"]["spec"]["containers"][0]
        assert prod_c["readinessProbe"] == base_c["readinessProbe"]
        assert prod_c["args"] == base_c["args"]
        assert prod_c["resources"] != base_c["resources"]
    for container in only(prod, "Deployment", "cityingest-api")["spec"]["template"]["spec"]["containers"]:
        assert not container["image"].endswith(":latest")


def test_the_ops_overview_reaches_every_bridge_and_consumer(rendered: list[dict[str, Any]]) -> None:
    """The API's component list names each pod-serving Service of the bridges and consumers (dns+http:
    every address of a headless Service is one instance) on the port the pods serve."""
    (api,) = only(rendered, "Deployment", "cityingest-api")["spec"]["template"]["spec"]["containers"]
    (value,) = [v["value"] for v in api["env"] if v["name"] == "CITYINGEST_OPS_COMPONENTS"]
    configured = {(t.name, t.host, t.port, t.discover) for t in (parse_target(e) for e in value.split(","))}
    served = set()
    for workload, component in (("cityingest-bridge", "bridge"), ("cityingest-consumer", "consumer")):
        doc = next(d for d in rendered if d["kind"] in WORKLOADS and d["metadata"]["name"] == workload)
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        service = only(rendered, "Service", workload)
        assert service["spec"]["clusterIP"] == "None", workload  # headless: one address per pod
        (port,) = service["spec"]["ports"]
        assert ports[port["targetPort"]] == port["port"]
        served.add((component, workload, port["port"], True))
    assert configured == served


def test_mqtt_is_tls_with_files_from_the_secret(rendered: list[dict[str, Any]]) -> None:
    config = config_data(rendered)
    assert config["CITYINGEST_MQTT_PORT"] == "8883"
    assert config["CITYINGEST_MQTT_TLS"] == "true"
    assert "1883" not in yaml.safe_dump_all(rendered)
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text(encoding="utf-8"))
    for workload in (d for d in rendered if d["kind"] in WORKLOADS):
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            mounted: set[str] = set()
            for mount in container.get("volumeMounts", []):
                secret = volumes[mount["name"]].get("secret")
                if secret is None:
                    continue
                # Secret files: read-only, from the documented Secret's keys, readable by the pod's group.
                assert mount["readOnly"] is True
                assert secret["secretName"] == example["metadata"]["name"]
                assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
                for item in secret["items"]:
                    assert item["key"] in example["stringData"], item
                    mounted.add(f"{mount['mountPath']}/{item['path']}")
            env = {v["name"]: v.get("value") for v in container.get("env", [])}
            files = {
                key: value
                for key, value in {**config, **env}.items()
                if key.endswith("_FILE") and key.startswith("CITYINGEST_") and value
            }
            # Every TLS file a process is given is a file of the Secret mounted in its container.
            if container["args"][0] in {"bridge", "api"}:
                assert files, container["name"]
                for key, value in files.items():
                    assert value in mounted, (container["name"], key)
    # No key the bridges do not need: the bridge gets the server CA only.
    bridge = only(rendered, "StatefulSet", "cityingest-bridge")["spec"]["template"]["spec"]
    (tls,) = [v for v in bridge["volumes"] if "secret" in v]
    assert [i["key"] for i in tls["secret"]["items"]] == ["mqtt-server-ca"]


def test_api_and_bridges_use_their_dynsec_accounts(rendered: list[dict[str, Any]]) -> None:
    (api,) = only(rendered, "Deployment", "cityingest-api")["spec"]["template"]["spec"]["containers"]
    env = {v["name"]: v for v in api["env"]}
    assert env["CITYINGEST_DYNSEC_ENABLED"]["value"] == "true"
    assert env["CITYINGEST_DYNSEC_USERNAME"]["value"] == "cityingest-admin"
    assert env["CITYINGEST_DYNSEC_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "mqtt-admin-password"
    assert "CITYINGEST_MQTT_PASSWORD" not in env
    bridge = only(rendered, "StatefulSet", "cityingest-bridge")
    (container,) = bridge["spec"]["template"]["spec"]["containers"]
    env = {v["name"]: v for v in container["env"]}
    assert env["CITYINGEST_MQTT_USERNAME"]["value"] == "cityingest-bridge"
    assert env["CITYINGEST_MQTT_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "mqtt-bridge-password"
    assert "CITYINGEST_DYNSEC_PASSWORD" not in env
    # Secrets are never written into a manifest: every password or key comes from a secretKeyRef.
    for workload in (d for d in rendered if d["kind"] in WORKLOADS):
        for c in pod_containers(workload):
            for var in c.get("env", []):
                if any(word in var["name"] for word in ("PASSWORD", "SECRET", "DATABASE_URL")):
                    assert "value" not in var or "$(" in var["value"], (c["name"], var["name"])
