"""Offline helpers for the deployment tests: Compose variable interpolation and schema loading."""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Mapping
from typing import Any, Final

import jsonschema

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, $VAR, and $$.
_VAR: Final = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    """A ``${VAR:?message}`` whose variable is unset (or empty) in the environment."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def interpolate_string(text: str, env: Mapping[str, str]) -> str:
    """Substitute variables in ``text`` as ``docker compose`` does (Compose Specification, Interpolation)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        unset_or_empty = not value
        missing = unset_or_empty if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if missing else str(value)
        if op in (":?", "?"):
            if missing:
                raise MissingVariable(name, arg)
            return str(value)
        if op in (":+", "+"):
            return "" if missing else interpolate_string(arg, env)
        return value or ""

    return _VAR.sub(substitute, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """``interpolate_string`` applied to every string value of a loaded Compose document."""
    if isinstance(node, str):
        return interpolate_string(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


def compose_schema_validator() -> jsonschema.protocols.Validator:
    """A validator for the Compose Specification schema vendored by the ``check-jsonschema`` package."""
    resource = importlib.resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(resource.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return validator


def schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    """Every schema violation of ``document`` as ``path: message``, for readable assertions."""
    return [
        f"{'/'.join(str(p) for p in err.absolute_path)}: {err.message}"
        for err in validator.iter_errors(document)
    ]
