"""Which bridges and consumers the operators' overview reads: ``name=http://host:port`` entries.

``name=dns+http://host:port`` names a headless Service (Kubernetes) or any name with several
addresses: every address it resolves to is read as an instance of its own, so that replicas added by
an autoscaler show up without a configuration change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from core.settings import split_csv

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_DISCOVER: Final = "dns+"


@dataclass(frozen=True, slots=True)
class ComponentTarget:
    """One configured bridge or consumer: its name and the base URL of its /readyz and /metrics."""

    name: str
    host: str
    port: int
    discover: bool = False
    """Read every address ``host`` resolves to as its own instance."""

    @property
    def netloc(self) -> str:
        """``host:port`` as a Host header and a URL want it (IPv6 literals in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.name}={_DISCOVER if self.discover else ''}http://{self.netloc}"


def parse_target(entry: str) -> ComponentTarget:
    """``name=[dns+]http://host[:port]``; ValueError saying what is wrong otherwise."""
    name, sep, url = entry.partition("=")
    name, url = name.strip(), url.strip()
    if not sep or not _NAME.match(name):
        raise ValueError(
            f"{entry!r}: write name=http://host:port, the name in letters, digits, '-', '_' or '.'"
        )
    discover = url.startswith(_DISCOVER)
    parts = urlsplit(url.removeprefix(_DISCOVER))
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{entry!r}: the URL must be http://host:port (components serve plain HTTP)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{entry!r}: give the base URL only; /readyz and /metrics are appended")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"{entry!r}: the port is not a number between 0 and 65535") from None
    return ComponentTarget(name, parts.hostname, port, discover)


def parse_targets(value: Any) -> Any:
    """Settings validator: a comma-separated string or a list of entries -> targets with unique names."""
    if isinstance(value, str):
        value = split_csv(value)
    if not isinstance(value, list | tuple):
        return value
    targets = [v if isinstance(v, ComponentTarget) else parse_target(str(v)) for v in value]
    names = [t.name for t in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"component names must be unique: {', '.join(duplicates)}")
    return tuple(targets)
