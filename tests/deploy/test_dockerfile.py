"""The Dockerfile, offline (no Docker engine here): one slim non-root image holding every package."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the last build stage."""
    steps = instructions()
    start = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[start:]


def test_final_stage_is_slim_and_runs_as_non_root() -> None:
    stage = final_stage()
    assert stage[0][1].startswith("python:3.11-slim")
    users = [arg for word, arg in stage if word == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot"
    assert int(uid) != 0


def test_entrypoint_is_the_cli_for_every_command() -> None:
    stage = dict(final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["cityingest"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert "cityingest" in scripts


def test_every_package_is_copied_and_none_is_ignored() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {arg.split()[0] for word, arg in instructions() if word == "COPY" and "--from" not in arg}
    assert packages <= copied
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [*packages, "pyproject.toml", "README.md", "LICENSE", "migrations/0001_timescaledb.sql"]
    for path in needed:
        assert not any(fnmatch.fnmatch(path, pattern) for pattern in ignored), path
        assert (REPO / path).exists(), path
