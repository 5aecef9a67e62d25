"""Revisions between two releases of a month, without I/O: which published fields changed, and why.

A release that re-releases a month compares every cell of every table with that month's previous
release. Each published field whose value differs is one revision (old value, new value, cause); a cell
new in the release has old values null, a cell gone has new values null. Fields that are null on both
sides (suppressed) never make a revision: what was not published cannot be revised. Floating-point
values that agree to one part in 10^9 are equal (PostgreSQL may sum in another order).

The cause is the same for every field of a cell, the first rule that holds:

1. ``registry``: ``devices_expected`` or ``readings_expected`` changed, or ``devices_without_interval``
   changed while ``devices_reporting`` did not (a device registered, removed or re-described);
2. ``late_readings``: ``devices_reporting`` changed, or ``readings`` changed where both are published;
3. ``correction``: the same readings, but a published value changed (a counter correction, a
   reprocessed reading);
4. ``disclosure``: only the suppression status changed (``obs_status``, ``conf_status``), for instance
   because secondary suppression now protects another cell of the table;
5. otherwise ``correction``.

A missing cell counts as zero devices and zero readings expected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from api.statistics import CELL_VALUES, StatisticsCell

Cause = Literal["registry", "late_readings", "correction", "disclosure"]
CellKey = tuple[str, str, str | None, str | None, str | None]
"""(breakdown, period, district, domain, provenance); breakdown as in :func:`by_columns`."""

REVISED_FIELDS: Final = tuple(f for f in CELL_VALUES if f != "suppressed")
"""The published fields of a cell a revision can name (``suppressed`` follows ``obs_status``)."""
_VALUES: Final = ("mean", "min", "max", "total_consumption", "flagged", "readings_received", "completeness")


def by_columns(by: tuple[str, ...] | list[str]) -> str:
    """A breakdown in canonical order, comma-separated: ``"district,provenance"``; ``""`` for none."""
    return ",".join(d for d in ("district", "domain", "provenance") if d in by)


@dataclass(frozen=True, slots=True)
class Revision:
    """One published field of one cell that changed between two releases."""

    by: str
    period: str
    district: str | None
    domain: str | None
    provenance: str | None
    field: str
    old: float | int | str | None
    new: float | int | str | None
    cause: Cause


def same(old: object, new: object) -> bool:
    """Whether two published values are equal (floats to one part in 10^9)."""
    if isinstance(old, float) and isinstance(new, float):
        return math.isclose(old, new, rel_tol=1e-9, abs_tol=0.0)
    return old == new


def _get(cell: StatisticsCell | None, name: str) -> object:
    return getattr(cell, name) if cell is not None else None


def _count(cell: StatisticsCell | None, name: str) -> object:
    return getattr(cell, name) if cell is not None else 0


def cause_of(old: StatisticsCell | None, new: StatisticsCell | None) -> Cause:
    """Why a cell changed between its previous release ``old`` and ``new`` (module docstring)."""
    reporting_changed = not same(_count(old, "devices_reporting"), _count(new, "devices_reporting"))
    if not same(_count(old, "devices_expected"), _count(new, "devices_expected")) or not same(
        float(_count(old, "readings_expected")),  # type: ignore[arg-type]
        float(_count(new, "readings_expected")),  # type: ignore[arg-type]
    ):
        return "registry"
    if not reporting_changed and not same(
        _count(old, "devices_without_interval"), _count(new, "devices_without_interval")
    ):
        return "registry"
    readings = _get(old, "readings"), _get(new, "readings")
    if reporting_changed or (None not in readings and readings[0] != readings[1]):
        return "late_readings"
    for name in _VALUES:
        a, b = _get(old, name), _get(new, name)
        if a is not None and b is not None and not same(a, b):
            return "correction"
    if _get(old, "obs_status") != _get(new, "obs_status") or _get(old, "conf_status") != _get(
        new, "conf_status"
    ):
        return "disclosure"
    return "correction"


def revisions(old: Mapping[CellKey, StatisticsCell], new: Mapping[CellKey, StatisticsCell]) -> list[Revision]:
    """Every published field that differs between the cells of a month's previous release ``old`` and
    of the new release ``new``, keyed alike; in key order (null keys first), then field order."""
    out: list[Revision] = []
    keys = sorted(set(old) | set(new), key=lambda k: tuple(p or "" for p in k))
    for key in keys:
        before, after = old.get(key), new.get(key)
        changed = [name for name in REVISED_FIELDS if not same(_get(before, name), _get(after, name))]
        if not changed:
            continue
        cause = cause_of(before, after)
        by, period, district, domain, provenance = key
        out += [
            Revision(
                by,
                period,
                district,
                domain,
                provenance,
                name,
                _get(before, name),  # type: ignore[arg-type]
                _get(after, name),  # type: ignore[arg-type]
                cause,
            )
            for name in changed
        ]
    return out
