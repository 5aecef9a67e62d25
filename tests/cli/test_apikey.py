"""``cityingest apikey create|list|revoke`` against a real database, and one clear line when it is down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from api.auth import Scope, parse_key
from cli.apikey import SCOPES
from devstack.process import free_port
from devstack.runfile import RUN_FILE, running_endpoint

pytestmark = pytest.mark.integration


def _cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "CITYINGEST_DATABASE_URL"} | (env or {})
    repo = Path(__file__).resolve().parents[2]
    full_env["PYTHONPATH"] = str(repo)
    return subprocess.run(
        [sys.executable, "-m", "cli", "apikey", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd or repo,
        env=full_env,
        timeout=60,
    )


async def _revoked(dsn: str, key_id: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(
            await conn.fetchval("SELECT revoked_at IS NOT NULL FROM api_keys WHERE key_id = $1", key_id)
        )
    finally:
        await conn.close()


async def test_create_list_revoke(database_url: str) -> None:
    created = _cli(
        "create", "--name", "city-dashboard", "--scope", "metrics:read", "--database-url", database_url
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    parsed = parse_key(key)
    assert parsed is not None, key
    key_id, secret = parsed

    listed = _cli("list", "--database-url", database_url)
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines() if row.startswith(key_id))
    assert "active" in line
    assert "metrics:read" in line
    assert "city-dashboard" in line
    assert "never" in line
    assert secret not in listed.stdout  # the secret is never shown again

    revoked = _cli("revoke", key_id, "--database-url", database_url)
    assert revoked.returncode == 0, revoked.stderr
    assert await _revoked(database_url, key_id)
    assert "revoked" in next(
        r for r in _cli("list", "--database-url", database_url).stdout.splitlines() if r.startswith(key_id)
    )

    again = _cli("revoke", key_id, "--database-url", database_url)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"cityingest apikey: no active API key with id {key_id!r} (see `cityingest apikey list`)"
    ]


async def test_revoke_by_whole_key(database_url: str) -> None:
    key = _cli("create", "--name", "n", "--scope", "ops:read", "--database-url", database_url).stdout.strip()
    result = _cli("revoke", key, "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    parsed = parse_key(key)
    assert parsed is not None, key
    assert await _revoked(database_url, parsed[0])


@pytest.mark.parametrize(
    "args",
    [
        ("create", "--name", "x", "--scope", "ops:read"),
        ("list",),
        ("revoke", "0123456789abcdef"),
    ],
)
def test_database_down_is_one_clear_line(args: tuple[str, ...]) -> None:
    port = free_port()
    result = _cli(*args, "--database-url", f"postgresql://nobody:secret@127.0.0.1:{port}/cityingest")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cityingest apikey: cannot reach the database at 127.0.0.1:{port}/cityingest")
    assert "secret" not in result.stderr


async def test_uses_the_dev_stack_running_from_this_directory(database_url: str, tmp_path: Path) -> None:
    state = tmp_path / ".cityingest"
    state.mkdir()
    # This test process stands in for the running `cityingest dev` (the run file names a live pid).
    (state / RUN_FILE).write_text(json.dumps({"pid": os.getpid(), "database": database_url}))
    result = _cli("create", "--name", "from-dev", "--scope", "metrics:read", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "using the dev stack's database" in result.stderr
    listed = _cli("list", cwd=tmp_path)
    assert "from-dev" in listed.stdout


def test_stale_run_file_is_ignored(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    (tmp_path / RUN_FILE).write_text(
        json.dumps({"pid": int(finished.stdout), "database": "postgresql://x@h/db"})
    )
    assert running_endpoint(tmp_path, "database") is None
    (tmp_path / RUN_FILE).write_text(json.dumps({"pid": os.getpid(), "database": "postgresql://x@h/db"}))
    assert running_endpoint(tmp_path, "database") == "postgresql://x@h/db"
    (tmp_path / RUN_FILE).write_text("{not json")
    assert running_endpoint(tmp_path, "database") is None


def test_the_cli_offers_every_scope_the_api_checks() -> None:
    """`cityingest apikey create --scope statistics:publish` (and every other scope) is accepted."""
    assert sorted(SCOPES) == sorted(s.value for s in Scope)
