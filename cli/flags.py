"""Command-line flags generated from settings models: every field is a ``--flag`` and a ``CITYINGEST_*``
variable, flags win over the environment, and validation errors read like usage errors."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from core.errors import ConfigError
from core.settings import ENV_PREFIX

S = TypeVar("S", bound=BaseSettings)


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(arg is bool for arg in typing.get_args(annotation))
    return False


def add_settings_flags(parser: argparse.ArgumentParser, model: type[BaseSettings]) -> None:
    """Add one flag per field of ``model``; the help names the variable and the default."""
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.default
        if field.default_factory is not None:
            default = "computed at start"
        if isinstance(default, tuple):
            default = ",".join(str(d) for d in default)
        text = f"{field.description or ''} (env {ENV_PREFIX}{name.upper()}; default: {default})"
        if _is_bool(field.annotation):
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text
            )
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar="VALUE", help=text)


def settings_from_args(model: type[S], args: argparse.Namespace) -> S:
    """Build ``model`` from the environment, overridden by the flags given on the command line."""
    overrides = {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
    try:
        return model(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
