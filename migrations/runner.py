"""Apply ``migrations/NNNN_name.sql`` in order, once each, recorded with a checksum.

Every file runs in its own transaction together with its ``schema_migrations`` row, under an advisory
lock so that several processes starting at once migrate exactly once. A file edited after it was
applied is refused: migrations are forward-only, a change is a new file.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg

from core.errors import MigrationError, StoreUnavailable

log = logging.getLogger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY: Final = 0x0C171E57  # a fixed advisory lock key for "cityingest migrations"
TIMESCALEDB_HINT: Final = (
    "TimescaleDB is not available in this PostgreSQL server. Install it with "
    "`bash scripts/install-timescaledb.sh` (or `make setup`), add `shared_preload_libraries = "
    "'timescaledb'` to postgresql.conf and restart the server; `cityingest dev` does all of this."
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its version number, file name, SQL text and SHA-256 checksum."""

    version: int
    name: str
    sql: str
    checksum: str


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every ``NNNN_name.sql`` file in ``directory``, in version order; duplicated numbers are refused."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lowercase_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name} and {found[version].name} share the number {version:04d}")
        sql = path.read_text(encoding="utf-8")
        found[version] = Migration(version, path.name, sql, hashlib.sha256(sql.encode()).hexdigest())
    return [found[v] for v in sorted(found)]


def plan(available: list[Migration], applied: dict[int, tuple[str, str]]) -> list[Migration]:
    """The migrations still to apply, given ``applied`` = {version: (name, checksum)} from the database.

    Raises :class:`MigrationError` when an applied file was edited or removed.
    """
    by_version = {m.version: m for m in available}
    for version, (name, checksum) in sorted(applied.items()):
        current = by_version.get(version)
        if current is None:
            raise MigrationError(
                f"the database has migration {name} which this cityingest does not know: "
                "run the cityingest version that created it, or a newer one"
            )
        if current.checksum != checksum:
            raise MigrationError(
                f"migration {current.name} was edited after it was applied "
                f"(checksum {checksum[:12]} in the database, {current.checksum[:12]} on disk). "
                "Migrations are forward-only: restore the file and put the change in a new migration."
            )
    return [m for m in available if m.version not in applied]


async def _check_timescaledb(conn: asyncpg.Connection) -> None:
    available = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    if not available or "timescaledb" not in str(preload):
        raise MigrationError(TIMESCALEDB_HINT)


async def apply_migrations(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Bring the database at ``dsn`` up to date; return the names of the files applied now."""
    available = discover(directory)
    try:
        conn: asyncpg.Connection = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"cannot connect to the database to migrate it: {exc}") from exc
    try:
        await _check_timescaledb(conn)
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
            todo = plan(available, {r["version"]: (r["name"], r["checksum"]) for r in rows})
            for migration in todo:
                log.info("applying migration %s", migration.name)
                async with conn.transaction():
                    try:
                        await conn.execute(migration.sql)
                    except asyncpg.PostgresError as exc:
                        raise MigrationError(f"migration {migration.name} failed: {exc}") from exc
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            return [m.name for m in todo]
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
