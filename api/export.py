"""Plain CSV of the monthly statistics: one header row, one row per cell, RFC 4180 quoting."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import fields

from api.statistics import StatisticsCell

# `suppressed` repeats obs_status Q; the CSV keeps the columns it always had.
CSV_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(StatisticsCell) if f.name != "suppressed")


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_csv(cells: Sequence[StatisticsCell]) -> str:
    """CSV text of ``cells``; empty fields for null values (suppressed, or not applicable)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for cell in cells:
        writer.writerow([_text(getattr(cell, name)) for name in CSV_COLUMNS])
    return out.getvalue()
