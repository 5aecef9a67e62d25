"""The SDMX structures of the statistics, without I/O: their content, versioning and pysdmx models.

A structure's *content* is a JSON-able dict (what migration 0011 stores): an item scheme (codelist,
concept scheme) holds its name and items ``{"id", "name", "description", "value"}`` (``value``: the
store's spelling of a generated code, e.g. a district), a data structure its name and components with
the versions of the codelists and concept scheme they use, a dataflow its name and DSD version.

Versions are ``MAJOR.MINOR.PATCH``: a removed item (or a changed layout) is a major change, an added
item a minor one, a name or description a patch; a DSD and its dataflow take the largest change of what
they reference. Rendering reads only the stored content, so an old version renders as it always did.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from pysdmx.model import (
    Annotation,
    Code,
    Codelist,
    Component,
    Components,
    Concept,
    ConceptScheme,
    Dataflow,
    DataStructureDefinition,
    DataType,
    Role,
    Schema,
)

from api.releases import PRIMARY_RULE, REVISIONS_POLICY, ROLLUPS, SECONDARY_RULE
from api.statistics import COMPLETENESS_RULE
from core.catalogue import Catalogue

Kind = Literal["codelist", "conceptscheme", "datastructure", "dataflow"]
KINDS: Final[tuple[Kind, ...]] = ("dataflow", "datastructure", "codelist", "conceptscheme")
TOTAL: Final = "_T"
UNKNOWN: Final = "_U"
FIRST_VERSION: Final = "1.0.0"
SDMX_ID: Final = re.compile(r"^[A-Za-z0-9_@$\-]+$")
"""SDMX 2.1 IDType."""

DIMENSIONS: Final = ("FREQ", "REF_AREA", "DOMAIN", "PROVENANCE", "INDICATOR", "STATISTIC", "TIME_PERIOD")
KEY_DIMENSIONS: Final = DIMENSIONS[:-1]
"""The dimensions of a data query key, in DSD order (TIME_PERIOD is queried by period)."""
ATTRIBUTES: Final = ("UNIT_MEASURE", "OBS_STATUS", "CONF_STATUS", "NB_DEVICES", "COMPLETENESS", "DECIMALS")

OBS_STATUS: Final = (
    ("A", "Normal value"),
    ("B", "Time series break"),
    ("D", "Definition differs"),
    ("E", "Estimated value"),
    ("F", "Forecast value"),
    ("G", "Experimental value"),
    ("I", "Imputed value (CCSA definition)"),
    ("K", "Data included in another category"),
    ("L", "Missing value; data exist but were not collected"),
    ("M", "Missing value; data cannot exist"),
    ("N", "Not significant"),
    ("O", "Missing value"),
    ("P", "Provisional value"),
    ("Q", "Missing value; suppressed"),
    ("S", "Strike and other special events"),
    ("U", "Low reliability"),
    ("V", "Unvalidated value"),
)
"""SDMX's code list CL_OBS_STATUS (SDMX global code list, version 2.2)."""
CONF_STATUS: Final = (
    ("F", "Free"),
    ("N", "Not for publication, restricted for internal use only"),
    ("C", "Confidential statistical information"),
    ("D", "Secondary confidentiality set by the sender, not for publication"),
    ("S", "Secondary confidentiality set and managed by the receiver, not for publication"),
    ("A", "Primary confidentiality due to small counts"),
    ("O", "Primary confidentiality due to dominance by one unit"),
    ("T", "Primary confidentiality due to dominance by two units"),
    ("G", "Primary confidentiality due to dominance by one or two units"),
    ("M", "Primary confidentiality due to data declared confidential based on other measures of concealment"),
    ("E", "Primary confidentiality due to dominance by one or two units, publication allowed by the unit"),
)
"""SDMX's code list CL_CONF_STATUS (SDMX global code list, version 1.3)."""
STATISTICS: Final = (
    ("MEAN", "Mean of the readings of the month"),
    ("MIN", "Smallest reading of the month"),
    ("MAX", "Largest reading of the month"),
    ("TOTAL", "Total consumption of the month (sum of the counter's increases)"),
)
PROVENANCES: Final = (
    ("official", "Devices operated by the city"),
    ("citizen", "Devices operated by citizens"),
    ("partner", "Devices operated by partner organisations"),
    ("unknown", "Devices of unrecorded provenance"),
)

_CONCEPTS: Final = (
    ("FREQ", "Frequency", None),
    ("REF_AREA", "Reference area (district)", "CL_REF_AREA"),
    ("DOMAIN", "Domain of the devices", "CL_DOMAIN"),
    ("PROVENANCE", "Provenance of the devices", "CL_PROVENANCE"),
    ("INDICATOR", "Indicator (metric)", "CL_INDICATOR"),
    ("STATISTIC", "Statistic of the month", "CL_STATISTIC"),
    ("TIME_PERIOD", "Time period (month)", None),
    ("OBS_VALUE", "Observation value", None),
    ("UNIT_MEASURE", "Unit of measure (SenML name)", None),
    ("OBS_STATUS", "Observation status", "CL_OBS_STATUS"),
    ("CONF_STATUS", "Confidentiality status", "CL_CONF_STATUS"),
    ("NB_DEVICES", "Number of devices reporting", None),
    ("COMPLETENESS", "Completeness: readings received / readings expected", None),
    ("DECIMALS", "Decimals of the observation value", None),
)
_CODED: Final = {"FREQ": "CL_FREQ"} | {cid: cl for cid, _, cl in _CONCEPTS if cl is not None}
_DTYPES: Final = {
    "TIME_PERIOD": DataType.PERIOD,
    "OBS_VALUE": DataType.DOUBLE,
    "NB_DEVICES": DataType.INTEGER,
    "COMPLETENESS": DataType.DOUBLE,
    "DECIMALS": DataType.INTEGER,
}
_OPTIONAL: Final = frozenset({"OBS_VALUE", "COMPLETENESS"})


class Bump(enum.IntEnum):
    """How much a new version of a structure changes."""

    PATCH = 1
    MINOR = 2
    MAJOR = 3


@dataclass(frozen=True, slots=True)
class Names:
    """Configurable names and ids of the published structures."""

    agency: str
    dataflow: str
    dataflow_name: str

    @property
    def dsd(self) -> str:
        """Id of the data structure."""
        return f"DSD_{self.dataflow}"

    @property
    def concepts(self) -> str:
        """Id of the concept scheme."""
        return f"CS_{self.dataflow}"


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored structure version."""

    kind: Kind
    agency: str
    id: str
    version: str
    content: Mapping[str, Any]
    created_at: datetime | None

    @property
    def key(self) -> tuple[Kind, str, str, str]:
        """``(kind, agency, id, version)``."""
        return (self.kind, self.agency, self.id, self.version)


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.2.0"`` -> ``(1, 2, 0)``, for ordering versions."""
    return tuple(int(p) for p in version.split("."))


def next_version(version: str, bump: Bump) -> str:
    """The version after ``version`` for a change of size ``bump``."""
    major, minor, patch = version_tuple(version)
    if bump is Bump.MAJOR:
        return f"{major + 1}.0.0"
    if bump is Bump.MINOR:
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def code_id(value: str, taken: Iterable[str]) -> str:
    """An SDMX id for a store value: itself when it is one, else a stable sanitised id."""
    if SDMX_ID.match(value) and value not in (TOTAL, UNKNOWN):
        return value
    base = re.sub(r"[^A-Za-z0-9_@$\-]", "_", value)
    candidate = f"{base}_{hashlib.sha256(value.encode()).hexdigest()[:6]}"
    used = set(taken)
    while candidate in used:
        candidate += "_"
    return candidate


def _item(cid: str, name: str, description: str | None = None, value: str | None = None) -> dict[str, Any]:
    return {"id": cid, "name": name, "description": description, "value": value}


def _generated(values: Iterable[str], previous: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    # A value keeps the id an earlier version gave it, so a renamed rule never renumbers codes.
    known = {i["value"]: i["id"] for i in (previous or {}).get("items", ()) if i.get("value") is not None}
    items: list[dict[str, Any]] = []
    taken: set[str] = set(known.values())
    for value in sorted(set(values)):
        cid = known.get(value) or code_id(value, taken)
        taken.add(cid)
        items.append(_item(cid, value, None, value))
    return items


def desired_codelists(
    districts: Iterable[str],
    domains: Iterable[str],
    catalogue: Catalogue,
    previous: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """The content every codelist should have now; ``previous`` is the latest stored content by id."""
    areas = _generated(districts, previous.get("CL_REF_AREA"))
    areas += [_item(TOTAL, "All districts"), _item(UNKNOWN, "Unknown district (device without district)")]
    domain_items = [*_generated(domains, previous.get("CL_DOMAIN")), _item(TOTAL, "All domains")]
    provenance = [_item(c, c, d, c) for c, d in PROVENANCES] + [_item(TOTAL, "All provenances")]
    indicators = []
    old = previous.get("CL_INDICATOR")
    ids = {i["value"]: i["id"] for i in _generated(catalogue, old)}
    for name in sorted(catalogue):
        spec = catalogue[name]
        indicators.append(
            _item(ids[name], spec.description or name, f"Unit {spec.unit}; {spec.kind}; metric {name}", name)
        )
    return {
        "CL_FREQ": {"name": "Frequency", "items": [_item("M", "Monthly")]},
        "CL_REF_AREA": {"name": "Districts", "items": areas},
        "CL_DOMAIN": {"name": "Domains", "items": domain_items},
        "CL_PROVENANCE": {"name": "Provenance of the devices", "items": provenance},
        "CL_INDICATOR": {"name": "Indicators (catalogue metrics)", "items": indicators},
        "CL_STATISTIC": {"name": "Statistics", "items": [_item(c, c, d) for c, d in STATISTICS]},
        "CL_OBS_STATUS": {"name": "Observation status", "items": [_item(c, n) for c, n in OBS_STATUS]},
        "CL_CONF_STATUS": {"name": "Confidentiality status", "items": [_item(c, n) for c, n in CONF_STATUS]},
    }


def desired_concepts() -> dict[str, Any]:
    """The content the concept scheme should have now."""
    return {"name": "Concepts of the city sensor statistics", "items": [_item(c, n) for c, n, _ in _CONCEPTS]}


def desired_dsd(names: Names, latest: Mapping[str, str], concepts_version: str) -> dict[str, Any]:
    """The DSD's content referencing codelist versions ``latest`` (id -> version)."""
    components = []
    for cid in (*DIMENSIONS, "OBS_VALUE", *ATTRIBUTES):
        role = "dimension" if cid in DIMENSIONS else "measure" if cid == "OBS_VALUE" else "attribute"
        codelist = _CODED.get(cid)
        components.append(
            {
                "id": cid,
                "role": role,
                "dtype": _DTYPES.get(cid, DataType.STRING).value,
                "required": cid not in _OPTIONAL,
                "codelist": codelist,
                "codelist_version": latest[codelist] if codelist else None,
            }
        )
    return {
        "name": f"{names.dataflow_name} (data structure)",
        "conceptscheme": names.concepts,
        "conceptscheme_version": concepts_version,
        "components": components,
    }


def dataflow_annotations() -> list[dict[str, str]]:
    """Reference metadata that holds for every release (NQAF headings that do not change per release),
    as SDMX annotations of the dataflow; each release's own (source devices, coverage gaps, timeliness,
    k) is at ``/v1/statistics/releases/{n}/metadata``. Stored with the dataflow version: a changed text
    is a patch version, and an old version keeps its texts."""
    methods = "; ".join(f"{name}: {text}" for name, text in ROLLUPS.items())
    return [
        {"id": "NQAF_METHODS", "title": "Methods: statistics", "type": "NQAF", "text": methods},
        {
            "id": "NQAF_COMPLETENESS",
            "title": "Methods: completeness",
            "type": "NQAF",
            "text": COMPLETENESS_RULE,
        },
        {
            "id": "NQAF_CONFIDENTIALITY",
            "title": "Methods: disclosure control (k per release in its metadata)",
            "type": "NQAF",
            "text": f"Primary: {PRIMARY_RULE}. Secondary: {SECONDARY_RULE}.",
        },
        {"id": "NQAF_REVISIONS", "title": "Revisions policy", "type": "NQAF", "text": REVISIONS_POLICY},
        {
            "id": "NQAF_RELEASE_METADATA",
            "title": "Source, coverage and timeliness of each release",
            "type": "NQAF",
            "text": "GET /v1/statistics/releases (each release's reference metadata at "
            "/v1/statistics/releases/{n}/metadata)",
        },
    ]


def desired_dataflow(names: Names, dsd_version: str) -> dict[str, Any]:
    """The dataflow's content using DSD version ``dsd_version``."""
    return {
        "name": names.dataflow_name,
        "datastructure": names.dsd,
        "datastructure_version": dsd_version,
        "annotations": dataflow_annotations(),
    }


def scheme_bump(old: Mapping[str, Any], new: Mapping[str, Any]) -> Bump | None:
    """The change from item scheme ``old`` to ``new``: None when equal."""
    if old == new:
        return None
    before = {i["id"]: i for i in old["items"]}
    after = {i["id"]: i for i in new["items"]}
    if set(before) - set(after):
        return Bump.MAJOR
    if set(after) - set(before):
        return Bump.MINOR
    return Bump.PATCH


def reference_bump(old: Mapping[str, Any], new: Mapping[str, Any], bumps: Mapping[str, Bump]) -> Bump | None:
    """The change of a DSD or dataflow: the largest change of what it references, else its own."""
    if old == new:
        return None
    strip = ("codelist_version", "conceptscheme_version", "datastructure_version")

    def shape(content: Mapping[str, Any]) -> Any:
        comps = [{k: v for k, v in c.items() if k not in strip} for c in content.get("components", ())]
        own = (*strip, "name", "annotations")
        return {k: v for k, v in content.items() if k not in own} | {"components": comps}

    if shape(old) != shape(new):
        return Bump.MAJOR
    changed = list(bumps.values())
    texts = ("name", "annotations")
    own = Bump.PATCH if any(old.get(t) != new.get(t) for t in texts) else None
    return max([*changed, *([own] if own else [])], default=Bump.PATCH)


def _urn_concept(agency: str, scheme: str, version: str, cid: str) -> str:
    return f"urn:sdmx:org.sdmx.infomodel.conceptscheme.Concept={agency}:{scheme}({version}).{cid}"


def item_scheme(stored: Stored, stub: bool = False) -> Codelist | ConceptScheme:
    """The pysdmx codelist or concept scheme of a stored version (a stub has no items)."""
    content = stored.content
    if stored.kind == "codelist":
        codes = (
            []
            if stub
            else [Code(id=i["id"], name=i["name"], description=i["description"]) for i in content["items"]]
        )
        return Codelist(
            id=stored.id,
            agency=stored.agency,
            version=stored.version,
            name=content["name"],
            items=codes,
            is_external_reference=stub,
            is_final=True,
        )
    concepts = (
        []
        if stub
        else [
            Concept(
                id=i["id"],
                name=i["name"],
                description=i["description"],
                urn=_urn_concept(stored.agency, stored.id, stored.version, i["id"]),
            )
            for i in content["items"]
        ]
    )
    return ConceptScheme(
        id=stored.id,
        agency=stored.agency,
        version=stored.version,
        name=content["name"],
        items=concepts,
        is_external_reference=stub,
        is_final=True,
    )


def components(dsd: Stored, lookup: Mapping[tuple[Kind, str, str, str], Stored]) -> Components:
    """The pysdmx components of a stored DSD, with their codelists and concepts resolved."""
    content = dsd.content
    scheme = lookup[("conceptscheme", dsd.agency, content["conceptscheme"], content["conceptscheme_version"])]
    concepts = {i["id"]: i for i in scheme.content["items"]}
    comps = []
    for c in content["components"]:
        codes = None
        if c["codelist"]:
            codelist = item_scheme(lookup[("codelist", dsd.agency, c["codelist"], c["codelist_version"])])
            assert isinstance(codelist, Codelist)  # noqa: S101 - a codelist key yields a codelist
            codes = codelist
        role = {"dimension": Role.DIMENSION, "measure": Role.MEASURE, "attribute": Role.ATTRIBUTE}[c["role"]]
        concept = concepts[c["id"]]
        comps.append(
            Component(
                id=c["id"],
                required=c["required"],
                role=role,
                concept=Concept(
                    id=c["id"],
                    name=concept["name"],
                    urn=_urn_concept(dsd.agency, scheme.id, scheme.version, c["id"]),
                    dtype=DataType(c["dtype"]),
                ),
                local_dtype=DataType(c["dtype"]),
                local_codes=codes,
                attachment_level="O" if role == Role.ATTRIBUTE else None,
            )
        )
    return Components(comps)


def data_structure(
    dsd: Stored, lookup: Mapping[tuple[Kind, str, str, str], Stored], stub: bool = False
) -> DataStructureDefinition:
    """The pysdmx DSD of a stored version.

    A stub keeps its components: pysdmx's SDMX-ML 2.1 writer always writes them, and the schema needs a
    dimension list once they are written.
    """
    return DataStructureDefinition(
        id=dsd.id,
        agency=dsd.agency,
        version=dsd.version,
        name=dsd.content["name"],
        components=components(dsd, lookup),
        is_external_reference=stub,
        is_final=True,
    )


def dataflow(flow: Stored, stub: bool = False) -> Dataflow:
    """The pysdmx dataflow of a stored version."""
    content = flow.content
    return Dataflow(
        id=flow.id,
        agency=flow.agency,
        version=flow.version,
        name=content["name"],
        structure=None
        if stub
        else f"DataStructure={flow.agency}:{content['datastructure']}({content['datastructure_version']})",
        is_external_reference=stub,
        is_final=True,
        annotations=() if stub else tuple(Annotation(**a) for a in content.get("annotations", ())),
    )


def schema(flow: Stored, lookup: Mapping[tuple[Kind, str, str, str], Stored]) -> Schema:
    """The pysdmx schema of data messages of a stored dataflow version (the data writers' structure)."""
    content = flow.content
    dsd = lookup[("datastructure", flow.agency, content["datastructure"], content["datastructure_version"])]
    return Schema(
        context="dataflow",
        agency=flow.agency,
        id=flow.id,
        version=flow.version,
        components=components(dsd, lookup),
        name=content["name"],
    )


def references(stored: Stored) -> list[tuple[Kind, str, str]]:
    """``(kind, id, version)`` of what ``stored`` uses directly (its children)."""
    content = stored.content
    if stored.kind == "dataflow":
        return [("datastructure", content["datastructure"], content["datastructure_version"])]
    if stored.kind == "datastructure":
        out: list[tuple[Kind, str, str]] = [
            ("conceptscheme", content["conceptscheme"], content["conceptscheme_version"])
        ]
        seen = set()
        for c in content["components"]:
            if c["codelist"] and c["codelist"] not in seen:
                seen.add(c["codelist"])
                out.append(("codelist", c["codelist"], c["codelist_version"]))
        return out
    return []


def code_values(codelist: Stored) -> dict[str, str | None]:
    """Code id -> the store value it stands for (None for codes that are not store values)."""
    return {i["id"]: i.get("value") for i in codelist.content["items"]}


def by_id(items: Sequence[Stored]) -> dict[str, Stored]:
    """Structures keyed by id."""
    return {s.id: s for s in items}
