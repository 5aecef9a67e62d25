"""The metric catalogue: each metric's canonical unit, kind (gauge or counter) and plausible range.

The catalogue ships as ``core/catalogue.json`` and can be extended by a JSON file of the same shape
(``CITYINGEST_CATALOGUE_FILE``): its metrics override shipped metrics of the same name, its
conversions are added to (or replace, for the same unit pair) the shipped ones.

Unit conversions to canonical units live here too. A conversion is linear,
``canonical = value * scale + offset``; one with ``scale == 1`` and ``offset == 0`` is a mere spelling
alias (``degC`` for ``Cel``) and does not change the value. Units are the SenML names (RFC 8428
section 12.1) where one exists.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

from core.errors import ConfigError
from core.types import MetricKind


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """What cityingest knows about one metric."""

    name: str
    unit: str
    kind: MetricKind
    min: float | None
    max: float | None
    domains: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True, slots=True)
class UnitConversion:
    """A linear conversion ``to = value * scale + offset`` from unit ``source`` to unit ``target``."""

    source: str
    target: str
    scale: float
    offset: float = 0.0

    @property
    def is_alias(self) -> bool:
        """True when the conversion only renames the unit and leaves the value unchanged."""
        return self.scale == 1.0 and self.offset == 0.0

    def apply(self, value: float) -> float:
        """Convert ``value`` from ``source`` to ``target`` units."""
        return value * self.scale + self.offset


class Catalogue(Mapping[str, MetricSpec]):
    """An immutable mapping of metric name to :class:`MetricSpec`, plus the known unit conversions."""

    def __init__(
        self,
        specs: Mapping[str, MetricSpec],
        conversions: Mapping[tuple[str, str], UnitConversion] | None = None,
    ) -> None:
        self._specs = dict(specs)
        self._conversions = dict(conversions or {})

    def __getitem__(self, name: str) -> MetricSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def counters(self) -> frozenset[str]:
        """Names of the cumulative (counter) metrics."""
        return frozenset(n for n, s in self._specs.items() if s.kind == "counter")

    def conversions(self) -> Mapping[tuple[str, str], UnitConversion]:
        """Every known conversion keyed by ``(source unit, canonical unit)``."""
        return dict(self._conversions)

    def conversion(self, source: str, target: str) -> UnitConversion | None:
        """The conversion from ``source`` to ``target`` units, or None when none is known."""
        return self._conversions.get((source, target))


def _number(raw: Any, field: str, default: float | None) -> float | None:
    value = raw.get(field, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number")
    return float(value)


def _parse_metrics(doc: dict[str, Any], origin: str) -> dict[str, MetricSpec]:
    specs: dict[str, MetricSpec] = {}
    for name, raw in cast(dict[str, Any], doc["metrics"]).items():
        try:
            kind = raw["kind"]
            if kind not in ("gauge", "counter"):
                raise ConfigError(f"{origin}: metric {name!r} has kind {kind!r}, expected gauge or counter")
            if not name or "/" in name or ":" in name:
                raise ConfigError(f"{origin}: metric name {name!r} must be non-empty without '/' or ':'")
            low, high = _number(raw, "min", None), _number(raw, "max", None)
            if low is not None and high is not None and low > high:
                raise ConfigError(f"{origin}: metric {name!r} has min {low} > max {high}")
            specs[name] = MetricSpec(
                name=name,
                unit=str(raw["unit"]),
                kind=kind,
                min=low,
                max=high,
                domains=tuple(str(d) for d in raw.get("domains", ())),
                description=str(raw.get("description", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{origin}: metric {name!r} is malformed: {exc!r}") from None
    return specs


def _parse_conversions(doc: dict[str, Any], origin: str) -> dict[tuple[str, str], UnitConversion]:
    raw_list = doc.get("conversions", [])
    if not isinstance(raw_list, list):
        raise ConfigError(f"{origin}: 'conversions' must be a list")
    conversions: dict[tuple[str, str], UnitConversion] = {}
    for i, raw in enumerate(raw_list):
        try:
            conversion = _conversion(raw)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{origin}: conversion {i} is malformed: {exc!r}") from None
        conversions[(conversion.source, conversion.target)] = conversion
    return conversions


def _conversion(raw: Any) -> UnitConversion:
    source, target = raw["from"], raw["to"]
    if not isinstance(source, str) or not isinstance(target, str) or not source or not target:
        raise ValueError("'from' and 'to' must be non-empty strings")
    scale = _number(raw, "scale", None)
    if scale is None or scale == 0:
        raise ValueError("'scale' must be a non-zero number")
    return UnitConversion(source, target, scale, _number(raw, "offset", 0.0) or 0.0)


def _parse(doc: Any, origin: str) -> tuple[dict[str, MetricSpec], dict[tuple[str, str], UnitConversion]]:
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics", {}), dict):
        raise ConfigError(f"{origin}: a catalogue is a JSON object with a 'metrics' object")
    doc = cast(dict[str, Any], doc)
    return _parse_metrics({"metrics": doc.get("metrics", {})}, origin), _parse_conversions(doc, origin)


def load_catalogue(extra_file: str | Path | None = None) -> Catalogue:
    """The shipped catalogue, extended (and overridden by name) by ``extra_file`` when given."""
    shipped = resources.files("core").joinpath("catalogue.json").read_text(encoding="utf-8")
    specs, conversions = _parse(json.loads(shipped), "core/catalogue.json")
    if extra_file is not None:
        path = Path(extra_file)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read metric catalogue {path}: {exc}") from None
        extra_specs, extra_conversions = _parse(doc, str(path))
        specs.update(extra_specs)
        conversions.update(extra_conversions)
    return Catalogue(specs, conversions)
