"""Plain CSV of the monthly statistics: one header row, one row per cell, RFC 4180 quoting."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import fields

from api.statistics import Cell

CSV_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Cell))


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_csv(cells: Sequence[Cell]) -> str:
    """CSV text of ``cells``; empty fields for null values (suppressed, or not applicable)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for cell in cells:
        writer.writerow([_text(getattr(cell, name)) for name in CSV_COLUMNS])
    return out.getvalue()
