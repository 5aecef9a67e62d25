"""``/sdmx``: the SDMX RESTful web services 1.5 (SDMX 2.1 API) for structures and data.

Structures are the stored versions (:mod:`api.sdmx.store`); data are the cells of
``/v1/statistics/monthly`` (the same figures), written by pysdmx (:mod:`api.sdmx.render`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from itertools import product
from typing import Annotated, Any, Final, Literal

import pandas as pd
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response

from api import report_queries
from api.auth import Scope, require_unless
from api.decimals import decimals_of
from api.deps import CatalogueDep, PoolDep, SettingsDep, StatisticsCacheDep, utc
from api.problems import Problem
from api.queries import GroupColumn
from api.sdmx import observation, statistics_of
from api.sdmx import structures as st
from api.sdmx.bodies import ReleaseBodies
from api.sdmx.query import (
    FORMAT_PARAMETER,
    DataFormat,
    QueryError,
    breakdown_options,
    negotiate_data,
    negotiate_structure,
    parse_flow_ref,
    parse_key,
    parse_period,
)
from api.sdmx.render import ERROR_TYPE, data_message, error_message, structure_message
from api.sdmx.store import Snapshot, StructureStore
from api.settings import ApiSettings
from api.statistics import month_range
from api.statistics_cache import StatisticsCache
from api.statistics_source import View, load_cells, release_info
from core.catalogue import MetricSpec

router = APIRouter(prefix="/sdmx", tags=["sdmx"])
# Structure paths (/{structure}/...) would also match /data/...: they are added after the data routes.
_structure_router = APIRouter()


def _public(request: Request) -> bool:
    settings: ApiSettings = request.app.state.settings
    return settings.sdmx_public


Reader = Annotated[object, Depends(require_unless(Scope.STATISTICS_READ, _public))]
Accept = Annotated[str | None, Header(description="SDMX media types, with q-values and wildcards.")]
_BREAKDOWNS: Final[dict[str, GroupColumn]] = {
    "REF_AREA": "district",
    "DOMAIN": "domain",
    "PROVENANCE": "provenance",
}
_XML_ERROR: Final[dict[str, Any]] = {"content": {ERROR_TYPE: {}}}


class SdmxError(Exception):
    """An error answered as an SDMX-ML 2.1 error message (404 no results, 406, 501)."""

    def __init__(self, status: int, code: int, text: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text


def _error(exc: SdmxError) -> Response:
    return Response(error_message(exc.code, exc.text), status_code=exc.status, media_type=ERROR_TYPE)


async def _snapshot(request: Request, pool: Any) -> Snapshot:
    store: StructureStore = request.app.state.sdmx_structures
    return await store.current(pool)


# --- structures -------------------------------------------------------------------------------------

StructureType = Literal["dataflow", "datastructure", "codelist", "conceptscheme"]
References = Annotated[
    str,
    Query(
        description="none, parents, parentsandsiblings, children, descendants, all, or a structure type "
        "(dataflow, datastructure, codelist, conceptscheme)",
        pattern="^(none|parents|parentsandsiblings|children|descendants|all|dataflow|datastructure|"
        "codelist|conceptscheme)$",
    ),
]
Detail = Annotated[
    str,
    Query(
        description="full, allstubs, referencestubs (allcompletestubs/referencecompletestubs as stubs, "
        "referencepartial as full)",
        pattern="^(full|allstubs|referencestubs|allcompletestubs|referencecompletestubs|referencepartial)$",
    ),
]
_STRUCTURE_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "An SDMX-ML 2.1 structure message.",
        "content": {"application/vnd.sdmx.structure+xml; version=2.1": {}, "application/xml": {}},
    },
    404: {"description": "No structure matches (SDMX error message, code 100).", **_XML_ERROR},
    406: {"description": "Not acceptable: only SDMX-ML 2.1 is written (SDMX error 406).", **_XML_ERROR},
}


def _matches(value: str, asked: str) -> bool:
    return asked in ("all", "*") or value in asked.split("+")


def _select(snapshot: Snapshot, kind: str, agency: str, rid: str, version: str) -> list[st.Stored]:
    found = [
        s
        for s in snapshot.versions.values()
        if s.kind == kind and _matches(s.agency, agency) and _matches(s.id, rid)
    ]
    if version in ("all", "*"):
        return sorted(found, key=lambda s: (s.id, st.version_tuple(s.version)))
    if version in ("latest", "~"):
        newest: dict[tuple[str, str], st.Stored] = {}
        for s in found:
            old = newest.get((s.agency, s.id))
            if old is None or st.version_tuple(s.version) > st.version_tuple(old.version):
                newest[(s.agency, s.id)] = s
        return sorted(newest.values(), key=lambda s: s.id)
    return sorted((s for s in found if s.version in version.split("+")), key=lambda s: s.id)


def _children(snapshot: Snapshot, s: st.Stored) -> list[st.Stored]:
    return [snapshot.versions[(k, s.agency, i, v)] for k, i, v in st.references(s)]


def _parents(snapshot: Snapshot, s: st.Stored) -> list[st.Stored]:
    ref = (s.kind, s.id, s.version)
    return [p for p in snapshot.versions.values() if p.agency == s.agency and ref in st.references(p)]


def _closure(snapshot: Snapshot, start: Sequence[st.Stored], step: Any) -> list[st.Stored]:
    out: dict[Any, st.Stored] = {}
    pending = [c for s in start for c in step(snapshot, s)]
    while pending:
        s = pending.pop()
        if s.key not in out:
            out[s.key] = s
            pending.extend(step(snapshot, s))
    return list(out.values())


def referenced(snapshot: Snapshot, items: Sequence[st.Stored], references: str) -> list[st.Stored]:
    """The structures ``references`` adds to ``items`` (SDMX REST 1.5 semantics)."""
    children = [c for s in items for c in _children(snapshot, s)]
    parents = [p for s in items for p in _parents(snapshot, s)]
    siblings = [c for p in parents for c in _children(snapshot, p)]
    if references == "none":
        return []
    if references == "children":
        return children
    if references == "descendants":
        return _closure(snapshot, items, _children)
    if references == "parents":
        return parents
    if references == "parentsandsiblings":
        return parents + siblings
    if references == "all":
        return parents + siblings + _closure(snapshot, items, _children)
    related = _closure(snapshot, items, _children) + _closure(snapshot, items, _parents)
    return [s for s in related if s.kind == references]


@dataclass(frozen=True, slots=True)
class StructureQuery:
    """The query parameters of a structure query."""

    references: References = "none"
    detail: Detail = "full"


StructureParams = Annotated[StructureQuery, Depends()]
AgencyId = Annotated[str, Path(description="Agency id, or all; + separates several.")]
ResourceId = Annotated[str, Path(description="Structure id, or all; + separates several.")]
Version = Annotated[str, Path(description="Version, latest or all; + separates several.")]


@_structure_router.get("/{structure}/{agency_id}", responses=_STRUCTURE_RESPONSES, response_class=Response)
async def structures_of_agency(
    request: Request, pool: PoolDep, _: Reader, structure: StructureType, agency_id: AgencyId,
    query: StructureParams, accept: Accept = None,
) -> Response:  # fmt: skip
    """The latest versions of an agency's structures of one type (SDMX-ML 2.1 structure message)."""
    return await structures(request, pool, structure, agency_id, "all", "latest", query, accept)


@_structure_router.get(
    "/{structure}/{agency_id}/{resource_id}", responses=_STRUCTURE_RESPONSES, response_class=Response
)
async def structures_latest(
    request: Request, pool: PoolDep, _: Reader, structure: StructureType, agency_id: AgencyId,
    resource_id: ResourceId, query: StructureParams, accept: Accept = None,
) -> Response:  # fmt: skip
    """The latest version of a structure (SDMX-ML 2.1 structure message)."""
    return await structures(request, pool, structure, agency_id, resource_id, "latest", query, accept)


@_structure_router.get(
    "/{structure}/{agency_id}/{resource_id}/{version}",
    responses=_STRUCTURE_RESPONSES,
    response_class=Response,
)
async def structures_versioned(
    request: Request, pool: PoolDep, _: Reader, structure: StructureType, agency_id: AgencyId,
    resource_id: ResourceId, version: Version, query: StructureParams, accept: Accept = None,
) -> Response:  # fmt: skip
    """Structures (dataflow, DSD, codelists, concept scheme) as an SDMX-ML 2.1 structure message."""
    return await structures(request, pool, structure, agency_id, resource_id, version, query, accept)


async def structures(
    request: Request,
    pool: Any,
    structure: str,
    agency_id: str,
    resource_id: str,
    version: str,
    query: StructureQuery,
    accept: str | None,
) -> Response:
    """The structure message answering a structure query."""
    references, detail = query.references, query.detail
    media = negotiate_structure(accept)
    if media is None:
        return _error(SdmxError(406, 406, "Not acceptable: structures are served as SDMX-ML 2.1 only"))
    snapshot = await _snapshot(request, pool)
    items = _select(snapshot, structure, agency_id, resource_id, version)
    if not items:
        return _error(
            SdmxError(404, 100, f"No results found: no {structure} {agency_id}/{resource_id}/{version}")
        )
    extra = [s for s in referenced(snapshot, items, references) if s.key not in {i.key for i in items}]
    everything = list({s.key: s for s in [*items, *extra]}.values())
    if detail in ("allstubs", "allcompletestubs"):
        stubs = [s.key for s in everything]
    elif detail in ("referencestubs", "referencecompletestubs"):
        stubs = [s.key for s in extra]
    else:
        stubs = []
    body = structure_message(snapshot, everything, stubs)
    return Response(body, media_type=media)


# --- data -------------------------------------------------------------------------------------------


_DATA_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "A data message in the negotiated format (Accept header, or the format parameter).",
        "content": {
            "application/vnd.sdmx.genericdata+xml; version=2.1": {},
            "application/vnd.sdmx.structurespecificdata+xml; version=2.1": {},
            "application/vnd.sdmx.generictimeseriesdata+xml; version=2.1": {},
            "application/vnd.sdmx.structurespecifictimeseriesdata+xml; version=2.1": {},
            "application/vnd.sdmx.data+csv; version=1.0.0": {},
            "application/vnd.sdmx.data+csv; version=2.0.0": {},
        },
    },
    400: {"description": "Malformed flowRef, key or parameter (problem+json)."},
    404: {"description": "No dataflow or no data match (SDMX error message, code 100).", **_XML_ERROR},
    406: {
        "description": "Not acceptable, e.g. SDMX-JSON data, which pysdmx cannot write (SDMX error 406).",
        **_XML_ERROR,
    },
    413: {"description": "The query may return more than CITYINGEST_SDMX_MAX_OBSERVATIONS (problem+json)."},
    501: {"description": "detail=serieskeysonly or nodata (SDMX error 501).", **_XML_ERROR},
}
Period = Annotated[
    str | None, Query(max_length=10, description="YYYY, YYYY-Sn, YYYY-Qn, YYYY-MM or YYYY-MM-DD")
]


@dataclass(frozen=True, slots=True)
class DataQuery:
    """The query parameters of a data query (SDMX REST 1.5 names)."""

    startPeriod: Period = None
    endPeriod: Period = None
    updatedAfter: Annotated[
        datetime | None,
        Query(
            description="Only observations a release published after this time added or revised "
            "(provisional figures are never included)."
        ),
    ] = None
    firstNObservations: Annotated[int | None, Query(ge=1)] = None
    lastNObservations: Annotated[int | None, Query(ge=1)] = None
    dimensionAtObservation: Annotated[
        str, Query(description="TIME_PERIOD, AllDimensions or a dimension.")
    ] = "TIME_PERIOD"
    detail: Literal["full", "dataonly", "serieskeysonly", "nodata"] = "full"
    format: Annotated[
        str | None,
        Query(
            description="Shortcut for Accept: genericdata, structurespecificdata, generictimeseriesdata, "
            "structurespecifictimeseriesdata, csvfile (or csv), csv2."
        ),
    ] = None
    release: Annotated[
        int | None, Query(ge=1, description="Figures of this release, the same bytes on every request.")
    ] = None
    asOf: Annotated[
        datetime | None,
        Query(
            description="Each month from the latest release published at or before this time "
            "(not with release)."
        ),
    ] = None


DataParams = Annotated[DataQuery, Depends()]
FlowRefPath = Annotated[str, Path(description="ID, AGENCY,ID or AGENCY,ID,VERSION of the dataflow.")]
KeyPath = Annotated[
    str, Path(description="FREQ.REF_AREA.DOMAIN.PROVENANCE.INDICATOR.STATISTIC; empty = any, + = or; or all.")
]
ProviderPath = Annotated[str, Path(description="Data provider: all, or the agency id.")]


@router.get("/data/{flow_ref}", responses=_DATA_RESPONSES, response_class=Response)
async def data_all(
    request: Request, pool: PoolDep, settings: SettingsDep, catalogue: CatalogueDep,
    cache: StatisticsCacheDep,
    _: Reader, flow_ref: FlowRefPath, query: DataParams, accept: Accept = None,
) -> Response:  # fmt: skip
    """Every observation of the dataflow in the period (key ``all``)."""
    return await data(request, pool, settings, catalogue, cache, flow_ref, "all", "all", query, accept)


@router.get("/data/{flow_ref}/{key}", responses=_DATA_RESPONSES, response_class=Response)
async def data_key(
    request: Request, pool: PoolDep, settings: SettingsDep, catalogue: CatalogueDep,
    cache: StatisticsCacheDep,
    _: Reader, flow_ref: FlowRefPath, key: KeyPath, query: DataParams, accept: Accept = None,
) -> Response:  # fmt: skip
    """Observations for an SDMX key; the figures of /v1/statistics/monthly."""
    return await data(request, pool, settings, catalogue, cache, flow_ref, key, "all", query, accept)


@router.get("/data/{flow_ref}/{key}/{provider_ref}", responses=_DATA_RESPONSES, response_class=Response)
async def data_key_provider(
    request: Request, pool: PoolDep, settings: SettingsDep, catalogue: CatalogueDep,
    cache: StatisticsCacheDep,
    _: Reader, flow_ref: FlowRefPath, key: KeyPath, provider_ref: ProviderPath, query: DataParams,
    accept: Accept = None,
) -> Response:  # fmt: skip
    """Observations for an SDMX key from a data provider (the agency is the only one)."""
    return await data(request, pool, settings, catalogue, cache, flow_ref, key, provider_ref, query, accept)


async def data(
    request: Request,
    pool: Any,
    settings: ApiSettings,
    catalogue: Any,
    cache: StatisticsCache,
    flow_ref: str,
    key: str,
    provider_ref: str,
    q: DataQuery,
    accept: str | None,
) -> Response:
    """The data message answering a data query; SDMX errors and 400 problems otherwise."""
    try:
        return await _data(request, pool, settings, catalogue, cache, flow_ref, key, provider_ref, q, accept)
    except SdmxError as exc:
        return _error(exc)
    except QueryError as exc:
        raise Problem(400, "Bad SDMX query", exc.detail, parameter=exc.parameter) from None


async def _data(
    request: Request,
    pool: Any,
    settings: ApiSettings,
    catalogue: Any,
    cache: StatisticsCache,
    flow_ref: str,
    key: str,
    provider_ref: str,
    q: DataQuery,
    accept: str | None,
) -> Response:
    start, end, updated_after, release, as_of = q.startPeriod, q.endPeriod, q.updatedAfter, q.release, q.asOf
    first_n, last_n, at_observation = q.firstNObservations, q.lastNObservations, q.dimensionAtObservation
    detail, fmt_name = q.detail, q.format
    if fmt_name is not None:
        fmt = FORMAT_PARAMETER.get(fmt_name)
        if fmt is None:
            raise SdmxError(
                406,
                406,
                f"Not acceptable: format {fmt_name!r} is not written (pysdmx writes no SDMX-JSON data)",
            )
    else:
        fmt = negotiate_data(accept)
        if fmt is None:
            raise SdmxError(
                406, 406, f"Not acceptable: none of {accept!r} is written; see /docs for the types"
            )
    if detail in ("serieskeysonly", "nodata"):
        raise SdmxError(501, 501, f"Not implemented: detail={detail}; use full or dataonly")
    ref = parse_flow_ref(flow_ref)
    if release is not None and as_of is not None:
        raise QueryError("asOf", "name a release or an asOf time, not both")
    view = View(
        release,
        utc(as_of, "asOf") if as_of is not None else None,
        utc(updated_after, "updatedAfter") if updated_after is not None else None,
    )
    bodies: ReleaseBodies = request.app.state.sdmx_release_bodies
    cache_key = None
    if view.release is not None:
        # A release's answer never changes: the same request is served the same bytes from memory
        # (only answers to existing releases are kept, so nothing needs to be read first).
        cache_key = (request.url.path, str(request.url.query), fmt.value)
        kept = bodies.get(cache_key)
        if kept is not None:
            return Response(kept[0], media_type=kept[1], headers=_IMMUTABLE)
    published = await _published(pool, view)
    snapshot = await _snapshot(request, pool)
    flows = _select(snapshot, "dataflow", ref.agency or "all", ref.id, ref.version or "latest")
    if flows and ref.version is None and published is not None and flows[0].key == snapshot.flow.key:
        flows = [snapshot.at(published[0]).flow]
    if not flows or provider_ref not in ("all", "*", flows[0].agency):
        raise SdmxError(
            404, 100, f"No results found: no dataflow {flow_ref!r} from provider {provider_ref!r}"
        )
    flow = flows[0]
    dsd_key = (
        "datastructure",
        flow.agency,
        flow.content["datastructure"],
        flow.content["datastructure_version"],
    )
    dsd = snapshot.versions[dsd_key]  # type: ignore[index]
    lists = {s.id: s for s in _children(snapshot, dsd) if s.kind == "codelist"}
    column = {c["id"]: c["codelist"] for c in dsd.content["components"]}
    values = {dim: st.code_values(lists[column[dim]]) for dim in st.KEY_DIMENSIONS}
    asked = parse_key(None if key == "all" else key, {d: list(v) for d, v in values.items()})
    dims = [c["id"] for c in dsd.content["components"] if c["role"] == "dimension"]
    if at_observation not in (*dims, "AllDimensions"):
        raise QueryError("dimensionAtObservation", f"use AllDimensions or one of {', '.join(dims)}")
    if fmt in (DataFormat.GENERIC_TS, DataFormat.STRUCTURE_SPECIFIC_TS) and at_observation != "TIME_PERIOD":
        raise QueryError(
            "dimensionAtObservation", "time-series formats need dimensionAtObservation=TIME_PERIOD"
        )
    if published is not None and published[2] and start is None and end is None:
        # A release's own months, not a window that moves with the clock: the same answer forever.
        months = _release_months(published[2], settings)
    else:
        months = await _months(pool, settings, start, end)
    names = None if asked["INDICATOR"] is None else {values["INDICATOR"][c] for c in asked["INDICATOR"]}
    # A release's metrics are rendered with the unit and kind it published them with.
    published_specs = published[1] if published is not None else {}
    metrics = [
        (
            published_specs.get(name, spec),
            [s for s in statistics_of(spec) if asked["STATISTIC"] is None or s in asked["STATISTIC"]],
        )
        for name, spec in sorted(catalogue.items())
        if names is None or name in names
    ]
    metrics = [(spec, stats) for spec, stats in metrics if stats]
    bound = len(months) * sum(len(s) for _, s in metrics)
    for dim in _BREAKDOWNS:
        bound *= len(values[dim]) if asked[dim] is None else len(asked[dim] or ())
    if bound > settings.sdmx_max_observations:
        raise Problem(
            413,
            "Query too broad",
            f"this query may return up to {bound} observations, more than the "
            f"{settings.sdmx_max_observations} "
            "this service answers at once: narrow the key or the period",
            sdmx_error_code=130,
        )
    to_code = {dim: {v: c for c, v in values[dim].items() if v is not None} for dim in _BREAKDOWNS}
    rows: list[dict[str, Any]] = []
    for spec, stats in metrics:
        places = decimals_of(spec.unit)
        for options in product(*(breakdown_options(asked[d]) for d in _BREAKDOWNS)):
            by = [col for (dim, col), broken in zip(_BREAKDOWNS.items(), options, strict=True) if broken]
            filters = [
                _filter(asked[d], values[d]) if broken else None
                for d, broken in zip(_BREAKDOWNS, options, strict=True)
            ]
            # A release (or asOf time) answers for the months it holds within the period asked for.
            cells = await load_cells(pool, settings, cache, spec, months, by, filters, view, partial=True)
            for cell in cells:
                codes = {
                    dim: _cell_code(getattr(cell, col), to_code[dim]) for dim, col in _BREAKDOWNS.items()
                }
                if any(asked[d] is not None and codes[d] not in (asked[d] or ()) for d in _BREAKDOWNS):
                    continue
                for stat in stats:
                    rows.append(
                        {
                            "FREQ": "M",
                            **codes,
                            "INDICATOR": to_indicator(values["INDICATOR"], spec.name),
                            **observation(cell, spec, stat, places),
                        }
                    )
    series_dims = [d for d in dims if d != "TIME_PERIOD"]
    frame = pd.DataFrame(rows, columns=[*dims, "OBS_VALUE", *st.ATTRIBUTES])
    if (first_n or last_n) and not frame.empty:
        frame = frame.sort_values([*series_dims, "TIME_PERIOD"], kind="stable")
        groups = frame.groupby(series_dims, sort=False, group_keys=False)
        parts = []
        if first_n:
            parts.append(groups.head(first_n))
        if last_n:
            parts.append(groups.tail(last_n))
        frame = pd.concat(parts).drop_duplicates().sort_values([*series_dims, "TIME_PERIOD"], kind="stable")
    if frame.empty:
        raise SdmxError(404, 100, "No results found: no observations match the key and period")
    if detail == "dataonly":
        frame = frame[[*dims, "OBS_VALUE"]]
    schema = st.schema(flow, snapshot.versions)
    header = None
    if published is not None:
        # A release's message is the same bytes on every request: its header is made from the request.
        header = (_message_id(request), published[0])
    body = data_message(schema, frame.reset_index(drop=True), fmt, at_observation, flow.agency, header)
    media = fmt.value.replace(";", "; ")
    if fmt in (DataFormat.CSV_1, DataFormat.CSV_2):
        media += "; charset=utf-8"
    if cache_key is not None:
        bodies.put(cache_key, body, media)
        return Response(body, media_type=media, headers=_IMMUTABLE)
    return Response(body, media_type=media)


_IMMUTABLE: Final = {"Cache-Control": "public, max-age=31536000, immutable"}
"""A release's data message never changes: HTTP caches may keep it for a year."""


def _release_months(months: Sequence[str], settings: ApiSettings) -> list[tuple[datetime, datetime]]:
    """From the first to the last month a release holds (``months``: YYYY-MM, ascending)."""
    first, last = parse_period(months[0], "release", end=False), parse_period(months[-1], "release", end=True)
    span = (last.year - first.year) * 12 + last.month - first.month + 1
    return month_range(first, last, max(settings.max_months, span))


async def _published(pool: Any, view: View) -> tuple[datetime, dict[str, MetricSpec], list[str]] | None:
    """For a release view: when it was published, its metrics as published and its months; for
    ``asOf``: that time (today's catalogue, no months of its own); None for the current figures."""
    if view.release is not None:
        info = await release_info(pool, view.release)
        if info is None:
            raise SdmxError(404, 100, f"No results found: there is no release {view.release}")
        return info.published_at, {m: info.spec(m) for m in info.specs}, info.months
    if view.as_of is not None:
        return view.as_of, {}, []
    return None


def _message_id(request: Request) -> str:
    """A message ID that is the same for the same request (SDMX IDType: letters, digits, _ and -)."""
    digest = hashlib.sha256(str(request.url.path).encode() + b"?" + str(request.url.query).encode())
    return f"IREF{digest.hexdigest()[:24].upper()}"


def to_indicator(codes: dict[str, str | None], name: str) -> str:
    """The INDICATOR code of metric ``name``."""
    return next(c for c, v in codes.items() if v == name)


def _filter(asked: frozenset[str] | None, codes: dict[str, str | None]) -> str | None:
    # One asked store value narrows the SQL; otherwise the cells are filtered after it.
    wanted = [codes[c] for c in (asked or ()) if c != st.TOTAL]
    return wanted[0] if len(wanted) == 1 and wanted[0] is not None else None


def _cell_code(value: str | None, codes: dict[str, str]) -> str:
    if value == st.TOTAL:
        return st.TOTAL
    if value is None:
        return st.UNKNOWN
    return codes.get(value, value)


async def _months(
    pool: Any, settings: ApiSettings, start: str | None, end: str | None
) -> list[tuple[datetime, datetime]]:
    now = datetime.now(UTC)
    last = parse_period(end, "endPeriod", end=True) if end else date(now.year, now.month, 1)
    if start:
        first = parse_period(start, "startPeriod", end=False)
    else:
        earliest = await report_queries.first_month(pool)
        if earliest is None:
            raise SdmxError(404, 100, "No results found: no readings yet")
        first = max(date(earliest.year, earliest.month, 1), _back(last, settings.max_months - 1))
    if last < first:
        raise QueryError("endPeriod", f"endPeriod {end} is before startPeriod {start}")
    try:
        return month_range(first, last, settings.max_months)
    except ValueError as exc:
        raise QueryError("startPeriod", str(exc)) from None


def _back(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 - n
    return date(index // 12, index % 12 + 1, 1)


router.include_router(_structure_router)
