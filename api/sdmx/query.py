"""SDMX REST 1.5 query syntax without I/O: flow references, keys, periods and content negotiation."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final

from api.sdmx.structures import KEY_DIMENSIONS, SDMX_ID, TOTAL

_PERIOD: Final = re.compile(
    r"^(?P<y>\d{4})(?:-(?:(?P<m>0[1-9]|1[0-2])(?:-(?P<d>0[1-9]|[12]\d|3[01]))?|Q(?P<q>[1-4])|S(?P<s>[12])))?$"
)


class QueryError(ValueError):
    """A malformed query: answered 400 naming the parameter."""

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(detail)
        self.parameter = parameter
        self.detail = detail


@dataclass(frozen=True, slots=True)
class FlowRef:
    """``ID``, ``AGENCY,ID`` or ``AGENCY,ID,VERSION`` (None: any/latest)."""

    agency: str | None
    id: str
    version: str | None


def parse_flow_ref(text: str) -> FlowRef:
    """A flowRef path segment."""
    parts = text.split(",")
    if not 1 <= len(parts) <= 3 or (not all(parts[:2]) and len(parts) > 1):
        raise QueryError("flowRef", f"{text!r} is not ID, AGENCY,ID or AGENCY,ID,VERSION")
    if len(parts) == 1:
        agency, sid, version = None, parts[0], None
    else:
        agency, sid = parts[0], parts[1]
        version = parts[2] if len(parts) == 3 else None
    if agency in ("all", "*"):
        agency = None
    if version in ("latest", "*", "", "all"):
        version = None
    if not SDMX_ID.match(sid) or (agency is not None and not SDMX_ID.match(agency)):
        raise QueryError("flowRef", f"{text!r} holds a character SDMX ids cannot hold")
    return FlowRef(agency, sid, version)


def parse_key(text: str | None, codes: Mapping[str, Sequence[str]]) -> dict[str, frozenset[str] | None]:
    """Dimension -> the codes asked (None: any) from an SDMX key such as ``M.North+_T...``.

    ``codes`` holds each key dimension's codes; an unknown code is a :class:`QueryError`.
    """
    if text is None or text in ("all", ""):
        return dict.fromkeys(KEY_DIMENSIONS)
    parts = text.split(".")
    if len(parts) != len(KEY_DIMENSIONS):
        raise QueryError(
            "key",
            f"the key {text!r} has {len(parts)} part(s); it needs {len(KEY_DIMENSIONS)}, one per dimension "
            f"{'.'.join(KEY_DIMENSIONS)} (empty = any, + = or), e.g. M.._T._T.temperature.MEAN",
        )
    out: dict[str, frozenset[str] | None] = {}
    for dim, part in zip(KEY_DIMENSIONS, parts, strict=True):
        if part == "":
            out[dim] = None
            continue
        asked = part.split("+")
        unknown = [a for a in asked if a not in codes[dim]]
        if unknown:
            raise QueryError(
                "key",
                f"{', '.join(repr(u) for u in unknown)} is not a code of {dim}; "
                f"its codes are {', '.join(codes[dim])}",
            )
        out[dim] = frozenset(asked)
    return out


def breakdown_options(asked: frozenset[str] | None) -> tuple[bool, ...]:
    """Whether a breakdown dimension's selection needs the total (False) and/or the breakdown (True)."""
    total = asked is None or TOTAL in asked
    broken = asked is None or bool(asked - {TOTAL})
    return tuple(o for o, wanted in ((False, total), (True, broken)) if wanted)


def parse_period(text: str, parameter: str, end: bool) -> date:
    """The month that starts (or, with ``end``, ends) an SDMX period: YYYY, YYYY-MM, YYYY-Qn, YYYY-Sn
    or YYYY-MM-DD; as the first day of that month."""
    match = _PERIOD.match(text)
    if match is None:
        raise QueryError(
            parameter, f"{text!r} is not a period: write YYYY, YYYY-MM, YYYY-Qn, YYYY-Sn or YYYY-MM-DD"
        )
    year = int(match["y"])
    if not 1970 <= year < 3000:
        raise QueryError(parameter, f"{text!r} is outside 1970..2999")
    if match["m"]:
        month = int(match["m"])
        if match["d"]:
            try:
                date(year, month, int(match["d"]))
            except ValueError:
                raise QueryError(parameter, f"{text!r} is not a calendar day") from None
        return date(year, month, 1)
    if match["q"]:
        first = 3 * int(match["q"]) - 2
        return date(year, first + 2 if end else first, 1)
    if match["s"]:
        first = 6 * int(match["s"]) - 5
        return date(year, first + 5 if end else first, 1)
    return date(year, 12 if end else 1, 1)


class DataFormat(enum.Enum):
    """The data formats pysdmx writes and we serve: (media type, pysdmx writer)."""

    GENERIC = "application/vnd.sdmx.genericdata+xml;version=2.1"
    GENERIC_TS = "application/vnd.sdmx.generictimeseriesdata+xml;version=2.1"
    STRUCTURE_SPECIFIC = "application/vnd.sdmx.structurespecificdata+xml;version=2.1"
    STRUCTURE_SPECIFIC_TS = "application/vnd.sdmx.structurespecifictimeseriesdata+xml;version=2.1"
    CSV_1 = "application/vnd.sdmx.data+csv;version=1.0.0"
    CSV_2 = "application/vnd.sdmx.data+csv;version=2.0.0"


FORMAT_PARAMETER: Final = {
    "genericdata": DataFormat.GENERIC,
    "generictimeseriesdata": DataFormat.GENERIC_TS,
    "structurespecificdata": DataFormat.STRUCTURE_SPECIFIC,
    "structurespecifictimeseriesdata": DataFormat.STRUCTURE_SPECIFIC_TS,
    "csvfile": DataFormat.CSV_1,
    "csv": DataFormat.CSV_1,
    "csv2": DataFormat.CSV_2,
}
"""The ``format`` shortcuts (as .Stat Suite names them); any other (e.g. jsondata) is a 406."""
STRUCTURE_TYPE: Final = "application/vnd.sdmx.structure+xml;version=2.1"
_STRUCTURE_TYPES: Final = (STRUCTURE_TYPE, "application/xml", "text/xml")
_DATA_ALIASES: Final = {
    "application/xml": DataFormat.GENERIC,
    "text/xml": DataFormat.GENERIC,
    "application/vnd.sdmx.genericdata+xml": DataFormat.GENERIC,
    "application/vnd.sdmx.generictimeseriesdata+xml": DataFormat.GENERIC_TS,
    "application/vnd.sdmx.structurespecificdata+xml": DataFormat.STRUCTURE_SPECIFIC,
    "application/vnd.sdmx.structurespecifictimeseriesdata+xml": DataFormat.STRUCTURE_SPECIFIC_TS,
    "text/csv": DataFormat.CSV_1,
    "application/vnd.sdmx.data+csv": DataFormat.CSV_1,
}


def _accepted(header: str | None) -> list[tuple[str, str | None, float]]:
    """``(type, version parameter, q)`` of an Accept header, best first."""
    out: list[tuple[str, str | None, float, int]] = []
    for pos, item in enumerate((header or "*/*").split(",")):
        fields = [f.strip() for f in item.split(";")]
        if not fields[0]:
            continue
        params = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
        params = {k.strip().lower(): v.strip().strip('"') for k, v in params.items()}
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if q > 0:
            out.append((fields[0].lower(), params.get("version"), q, pos))
    out.sort(key=lambda t: (-t[2], t[3]))
    return [(t, v, q) for t, v, q, _ in out]


def negotiate_data(accept: str | None) -> DataFormat | None:
    """The data format to answer ``accept`` with; None when we write none of the types it accepts."""
    for media, version, _ in _accepted(accept):
        if media in ("*/*", "application/*"):
            return DataFormat.GENERIC
        if media == "text/*":
            return DataFormat.CSV_1
        if media == "application/vnd.sdmx.data+csv":
            if version in (None, "1.0.0", "1.0"):
                return DataFormat.CSV_1
            if version in ("2.0.0", "2.0"):
                return DataFormat.CSV_2
            continue
        found = _DATA_ALIASES.get(media)
        if found is not None and (
            version is None or version == "2.1" or media.startswith(("text/", "application/xml"))
        ):
            return found
    return None


def negotiate_structure(accept: str | None) -> str | None:
    """The media type to answer a structure query with (SDMX-ML 2.1); None when not acceptable."""
    for media, version, _ in _accepted(accept):
        if media in ("*/*", "application/*", "text/*"):
            return STRUCTURE_TYPE
        if media in _STRUCTURE_TYPES and (version is None or version == "2.1"):
            return STRUCTURE_TYPE if media == STRUCTURE_TYPE.split(";")[0] else media
        if media == "application/vnd.sdmx.structure+xml" and version in (None, "2.1"):
            return STRUCTURE_TYPE
    return None
