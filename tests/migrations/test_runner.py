"""The migration runner against a real PostgreSQL+TimescaleDB: order, idempotence, edited files."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import asyncpg
import pytest

from core.errors import MigrationError
from devstack.postgres import PostgresCluster
from devstack.process import free_port
from migrations import apply_migrations, discover, plan
from migrations.runner import MIGRATIONS_DIR

pytestmark = pytest.mark.integration


@pytest.fixture
def migration_dir(tmp_path: Path) -> Path:
    """A copy of the shipped migrations that a test may edit."""
    target = tmp_path / "migrations"
    target.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, target / path.name)
    return target


def test_shipped_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in discover()]
    assert versions == list(range(1, len(versions) + 1))


def test_plan_refuses_unknown_applied_version() -> None:
    with pytest.raises(MigrationError, match="does not know"):
        plan([], {7: ("0007_future.sql", "abc")})


def test_bad_file_name_is_refused(migration_dir: Path) -> None:
    (migration_dir / "2_oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=re.escape("NNNN_lowercase_name.sql")):
        discover(migration_dir)


async def test_applies_in_order_once_and_records_checksums(
    pg_cluster: PostgresCluster, migration_dir: Path
) -> None:
    dsn = pg_cluster.create_database("mig_order")
    (migration_dir / "0900_first.sql").write_text("CREATE TABLE mig_a (x int);")
    (migration_dir / "0901_second.sql").write_text("INSERT INTO mig_a VALUES (1);")
    applied = await apply_migrations(dsn, migration_dir)
    assert applied[-2:] == ["0900_first.sql", "0901_second.sql"]
    assert await apply_migrations(dsn, migration_dir) == []
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM mig_a") == 1
        rows = await conn.fetch("SELECT name, checksum FROM schema_migrations ORDER BY version")
        on_disk = {m.name: m.checksum for m in discover(migration_dir)}
        assert {r["name"]: r["checksum"] for r in rows} == on_disk
        assert await conn.fetchval("SELECT extname FROM pg_extension WHERE extname = 'timescaledb'")
    finally:
        await conn.close()


async def test_edited_applied_migration_is_refused(pg_cluster: PostgresCluster, migration_dir: Path) -> None:
    dsn = pg_cluster.create_database("mig_edited")
    (migration_dir / "0900_table.sql").write_text("CREATE TABLE mig_b (x int);")
    await apply_migrations(dsn, migration_dir)
    (migration_dir / "0900_table.sql").write_text("CREATE TABLE mig_b (x bigint);")
    with pytest.raises(MigrationError, match=re.escape("0900_table.sql was edited after it was applied")):
        await apply_migrations(dsn, migration_dir)


async def test_failed_migration_leaves_nothing_half_applied(
    pg_cluster: PostgresCluster, migration_dir: Path
) -> None:
    dsn = pg_cluster.create_database("mig_failed")
    (migration_dir / "0900_broken.sql").write_text("CREATE TABLE mig_c (x int); SELECT no_such_column;")
    with pytest.raises(MigrationError, match=re.escape("0900_broken.sql failed")):
        await apply_migrations(dsn, migration_dir)
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('mig_c')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE version = 900") == 0
    finally:
        await conn.close()


async def test_missing_timescaledb_is_explained(service_dir: Path) -> None:
    # A cluster without TimescaleDB preloaded: the runner must say how to install it.
    cluster = PostgresCluster(
        service_dir / "pg-plain",
        free_port(),
        settings={"shared_preload_libraries": "''", "shared_buffers": "'32MB'", "fsync": "off"},
    )
    cluster.start()
    try:
        with pytest.raises(MigrationError, match=re.escape("install-timescaledb.sh")):
            await apply_migrations(cluster.dsn("postgres"))
    finally:
        cluster.stop()
