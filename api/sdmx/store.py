"""Stored SDMX structure versions (migrations/0011_sdmx_structures.sql) and the check that adds new ones.

The check is cheap: each request reads the registry version (migration 0009); only when it, or the
hash of the catalogue and the SDMX settings, differs from what was last checked does the API take the
advisory lock, compare the codelists with the store and write the versions that changed. Versions are
stored, never recomputed: everything served is read back from ``sdmx_structures``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import asyncpg

from api.sdmx import structures as st
from api.storeerrors import translated
from core.catalogue import Catalogue

_LOCK: Final = 0x5D3C_0011
"""Advisory lock key of the structure check (one writer at a time across API replicas)."""

_ROWS_SQL: Final = "SELECT kind, agency, id, version, content, created_at FROM sdmx_structures"
_REGISTRY_SQL: Final = "SELECT version FROM device_registry_version"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every stored structure version, and the current ones of the configured dataflow."""

    versions: Mapping[tuple[st.Kind, str, str, str], st.Stored]
    flow: st.Stored
    dsd: st.Stored
    codelists: Mapping[str, st.Stored]
    """The codelists the current DSD uses, by id."""
    rendered: dict[Any, str] = field(default_factory=dict)
    """Rendered messages of this snapshot (immutable input, so kept for its lifetime)."""

    @property
    def codes(self) -> dict[str, dict[str, str]]:
        """Key dimension -> store value -> code id, of the current DSD's codelists."""
        column = {c["id"]: c["codelist"] for c in self.dsd.content["components"]}
        return {
            dim: {v: c for c, v in st.code_values(self.codelists[column[dim]]).items() if v is not None}
            for dim in st.KEY_DIMENSIONS
            if column.get(dim)
        }

    def at(self, when: datetime) -> Snapshot:
        """The dataflow as it was at ``when``, with its DSD and codelists (the oldest version if all are
        newer): a release's data keeps the structure it was published with, so its bytes never change."""
        same = (self.flow.kind, self.flow.agency, self.flow.id)
        versions = sorted(
            (s for s in self.versions.values() if (s.kind, s.agency, s.id) == same),
            key=lambda s: st.version_tuple(s.version),
        )
        before = [s for s in versions if s.created_at is not None and s.created_at <= when]
        flow = before[-1] if before else versions[0]
        if flow is self.flow:
            return self
        dsd = self.versions[
            (
                "datastructure",
                flow.agency,
                flow.content["datastructure"],
                flow.content["datastructure_version"],
            )
        ]
        lists = {i: self.versions[(k, dsd.agency, i, v)] for k, i, v in st.references(dsd) if k == "codelist"}
        return Snapshot(self.versions, flow, dsd, lists)

    def latest(self, kind: st.Kind, agency: str, sid: str) -> st.Stored | None:
        """The newest version of a structure."""
        found = [s for k, s in self.versions.items() if k[:3] == (kind, agency, sid)]
        return max(found, key=lambda s: st.version_tuple(s.version), default=None)


class StructureStore:
    """The API's view of the stored structures: re-checked when the registry or catalogue moved."""

    def __init__(self, names: st.Names, catalogue: Catalogue, domains: Sequence[str]) -> None:
        self.names = names
        self._catalogue = catalogue
        self._domains = tuple(domains)
        self._hash = _source_hash(names, catalogue, domains)
        self._snapshot: Snapshot | None = None
        self._checked: int | None = None
        self._lock = asyncio.Lock()

    async def current(self, pool: asyncpg.Pool) -> Snapshot:
        """The structures as of now: stored first if the registry or catalogue changed a codelist."""
        registry = await _registry_version(pool)
        if self._snapshot is not None and self._checked == registry:
            return self._snapshot
        async with self._lock:
            if self._snapshot is None or self._checked != registry:
                self._checked, self._snapshot = await self._refresh(pool)
        return self._snapshot

    @translated(request_data=False)
    async def _refresh(self, pool: asyncpg.Pool) -> tuple[int, Snapshot]:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            registry = int(await conn.fetchval(_REGISTRY_SQL))
            checked = await conn.fetchrow(
                "SELECT registry_version, source_hash FROM sdmx_structure_sources "
                "WHERE agency = $1 AND dataflow = $2",
                self.names.agency,
                self.names.dataflow,
            )
            rows = [_stored(r) for r in await conn.fetch(_ROWS_SQL)]
            if checked is None or (checked["registry_version"], checked["source_hash"]) != (
                registry,
                self._hash,
            ):
                districts = [
                    r["district"]
                    for r in await conn.fetch(
                        "SELECT DISTINCT district FROM devices WHERE district IS NOT NULL"
                    )
                ]
                domains = [r["domain"] for r in await conn.fetch("SELECT DISTINCT domain FROM devices")]
                new = plan(self.names, rows, districts, [*self._domains, *domains], self._catalogue)
                for s in new:
                    await conn.execute(
                        "INSERT INTO sdmx_structures (kind, agency, id, version, content) "
                        "VALUES ($1, $2, $3, $4, $5::jsonb)",
                        s.kind,
                        s.agency,
                        s.id,
                        s.version,
                        json.dumps(s.content),
                    )
                await conn.execute(
                    "INSERT INTO sdmx_structure_sources (agency, dataflow, registry_version, source_hash) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT (agency, dataflow) DO UPDATE "
                    "SET registry_version = $3, source_hash = $4, checked_at = now()",
                    self.names.agency,
                    self.names.dataflow,
                    registry,
                    self._hash,
                )
                if new:
                    rows = [_stored(r) for r in await conn.fetch(_ROWS_SQL)]
        return registry, _snapshot(self.names, rows)


def plan(
    names: st.Names,
    rows: Sequence[st.Stored],
    districts: Sequence[str],
    domains: Sequence[str],
    catalogue: Catalogue,
) -> list[st.Stored]:
    """The structure versions to store so that the newest ones describe the registry and catalogue."""
    agency = names.agency

    def latest(kind: st.Kind, sid: str) -> st.Stored | None:
        found = [r for r in rows if (r.kind, r.agency, r.id) == (kind, agency, sid)]
        return max(found, key=lambda s: st.version_tuple(s.version), default=None)

    new: list[st.Stored] = []
    versions: dict[str, str] = {}
    bumps: dict[str, st.Bump] = {}

    def put(
        kind: st.Kind, sid: str, content: dict[str, Any], bump: st.Bump | None, old: st.Stored | None
    ) -> str:
        if old is not None and bump is None:
            return old.version
        version = st.FIRST_VERSION if old is None else st.next_version(old.version, bump or st.Bump.PATCH)
        # created_at is set by the store.
        new.append(st.Stored(kind, agency, sid, version, content, None))
        return version

    previous = {cid: s.content for cid in _codelist_ids() if (s := latest("codelist", cid)) is not None}
    for cid, content in st.desired_codelists(districts, domains, catalogue, previous).items():
        old = latest("codelist", cid)
        bump = None if old is None else st.scheme_bump(old.content, content)
        if bump is not None:
            bumps[cid] = bump
        versions[cid] = put("codelist", cid, content, bump, old)
    old = latest("conceptscheme", names.concepts)
    concepts = st.desired_concepts()
    bump = None if old is None else st.scheme_bump(old.content, concepts)
    if bump is not None:
        bumps[names.concepts] = bump
    concepts_version = put("conceptscheme", names.concepts, concepts, bump, old)

    old = latest("datastructure", names.dsd)
    dsd = st.desired_dsd(names, versions, concepts_version)
    bump = None if old is None else st.reference_bump(old.content, dsd, bumps)
    dsd_version = put("datastructure", names.dsd, dsd, bump, old)

    old = latest("dataflow", names.dataflow)
    flow = st.desired_dataflow(names, dsd_version)
    dsd_bump = {names.dsd: bump} if bump is not None else {}
    flow_bump = None if old is None else st.reference_bump(old.content, flow, dsd_bump)
    put("dataflow", names.dataflow, flow, flow_bump, old)
    return new


def _codelist_ids() -> tuple[str, ...]:
    return ("CL_REF_AREA", "CL_DOMAIN", "CL_INDICATOR")


def _stored(row: Any) -> st.Stored:
    content = row["content"]
    return st.Stored(
        row["kind"],
        row["agency"],
        row["id"],
        row["version"],
        json.loads(content) if isinstance(content, str) else content,
        row["created_at"],
    )


def _snapshot(names: st.Names, rows: Sequence[st.Stored]) -> Snapshot:
    versions = {r.key: r for r in rows}

    def latest(kind: st.Kind, sid: str) -> st.Stored:
        found = [r for r in rows if (r.kind, r.agency, r.id) == (kind, names.agency, sid)]
        return max(found, key=lambda s: st.version_tuple(s.version))

    flow = latest("dataflow", names.dataflow)
    dsd = versions[
        ("datastructure", names.agency, flow.content["datastructure"], flow.content["datastructure_version"])
    ]
    codelists = {
        cid: versions[("codelist", names.agency, cid, version)]
        for kind, cid, version in st.references(dsd)
        if kind == "codelist"
    }
    return Snapshot(versions, flow, dsd, codelists)


@translated(request_data=False)
async def _registry_version(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval(_REGISTRY_SQL))


def _source_hash(names: st.Names, catalogue: Catalogue, domains: Sequence[str]) -> str:
    spec = {
        "names": [names.agency, names.dataflow, names.dataflow_name],
        "domains": sorted(domains),
        "metrics": {n: [s.unit, s.kind, s.description] for n, s in sorted(catalogue.items())},
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
