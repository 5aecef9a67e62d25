"""The consumer process the fault tests start is the one compose and Kubernetes run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.consumers.harness import CONSUME_COMMAND

REPO = Path(__file__).resolve().parents[2]


def _image_entrypoint() -> list[str]:
    for line in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith("ENTRYPOINT"):
            entry: list[str] = yaml.safe_load(line.removeprefix("ENTRYPOINT"))
            return entry
    raise AssertionError("the Dockerfile has no ENTRYPOINT")


def test_the_harness_runs_the_deployed_consume_command() -> None:
    # `python -m cli` is the `cityingest` console script (pyproject's [project.scripts]).
    assert _image_entrypoint() == ["cityingest"]
    assert CONSUME_COMMAND[1:] == ("-m", "cli", "consume")
    compose: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    commands = [s["command"] for name, s in compose["services"].items() if name.startswith("consumer-")]
    assert commands
    assert all(c[0] == "consume" and all(a.startswith("--") for a in c[1::2]) for c in commands), commands
    k8s = list(yaml.safe_load_all((REPO / "deploy/k8s/base/consumer.yaml").read_text(encoding="utf-8")))
    containers = [
        c
        for doc in k8s
        if doc and doc.get("kind") == "Deployment"
        for c in doc["spec"]["template"]["spec"]["containers"]
    ]
    assert [c["args"][0] for c in containers] == ["consume"]
