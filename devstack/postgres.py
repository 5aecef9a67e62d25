"""A private PostgreSQL 15 cluster with TimescaleDB preloaded, in a data directory of ours."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Final

from devstack.process import (
    ChildProcess,
    ServiceError,
    ServiceProcess,
    chown_tree,
    drop_privileges,
    service_user,
)

log = logging.getLogger(__name__)

PG_BIN: Final = Path(os.environ.get("CITYINGEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
_IDENT: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
INSTALL_HINT: Final = "run `make setup` (or `bash scripts/setup.sh`)"

# Durability stays on (fsync, synchronous_commit, full_page_writes); what we tune is memory and WAL so
# insert rates hold up as a chunk outgrows the default 128 MB of shared_buffers.
TUNING: Final[dict[str, str]] = {
    "shared_preload_libraries": "'timescaledb'",
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "200",
    "shared_buffers": "'1GB'",
    "effective_cache_size": "'4GB'",
    "work_mem": "'32MB'",
    "maintenance_work_mem": "'256MB'",
    "max_wal_size": "'4GB'",
    "min_wal_size": "'512MB'",
    "checkpoint_timeout": "'15min'",
    "checkpoint_completion_target": "0.9",
    "wal_compression": "lz4",  # PostgreSQL 15 (Debian builds it --with-lz4): cheaper than pglz
    "wal_buffers": "'32MB'",
    "timescaledb.telemetry_level": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
}


def timescaledb_installed(pg_bin: Path = PG_BIN) -> bool:
    """Whether the TimescaleDB extension files are installed for this PostgreSQL."""
    try:
        sharedir = subprocess.run(
            [str(pg_bin / "pg_config"), "--sharedir"], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return False
    return (Path(sharedir) / "extension" / "timescaledb.control").is_file()


class PostgresCluster(ServiceProcess):
    """initdb (once), start, create databases and stop a private cluster on ``host:port``."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        host: str = "127.0.0.1",
        superuser: str = "cityingest",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.host = host
        self.superuser = superuser
        self.settings = {**TUNING, **(settings or {})}
        self.os_user = service_user("postgres")
        self._proc: ChildProcess | None = None

    def dsn(self, database: str = "postgres") -> str:
        """A libpq/asyncpg DSN for ``database`` in this cluster."""
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{database}"

    def _check_binaries(self) -> None:
        if not (PG_BIN / "postgres").is_file():
            raise ServiceError(
                f"PostgreSQL 15 server binaries are missing under {PG_BIN}: "
                f"`apt-get install postgresql-15`, or {INSTALL_HINT}"
            )
        if not timescaledb_installed():
            raise ServiceError(
                "the TimescaleDB extension is not installed for PostgreSQL 15: "
                f"`bash scripts/install-timescaledb.sh`, or {INSTALL_HINT}"
            )

    def initialised(self) -> bool:
        """Whether the data directory holds a cluster already."""
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> None:
        """Create the cluster if the data directory has none (a second run reuses the data)."""
        self._check_binaries()
        if self.initialised():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        chown_tree(self.data_dir, self.os_user)
        os.chmod(self.data_dir, 0o700)
        result = subprocess.run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            capture_output=True,
            text=True,
            check=False,
            **drop_privileges(self.os_user),
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        # Settings live in postgresql.auto.conf-style overrides appended to postgresql.conf.
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# cityingest\n")
            for key, value in self.settings.items():
                conf.write(f"{key} = {value}\n")

    def start(self, timeout: float = 60.0) -> None:
        """Initialise if needed and start the server; return once it accepts connections."""
        self.init()
        log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        if self.os_user is not None and log_path.exists():
            shutil.chown(log_path, self.os_user)
        self._proc = ChildProcess(
            "postgres",
            [str(PG_BIN / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)],
            log_path=log_path,
            user=self.os_user,
        )
        self._proc.start_listening(self.host, self.port, timeout, lambda: self._wait_ready(timeout))

    def _wait_ready(self, timeout: float) -> None:
        # The port opens before recovery ends: pg_isready answers "rejecting connections" (exit 1)
        # until the server accepts them, so ask again until the deadline.
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", self.host, "-p", str(self.port), "-t", "5"],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode == 0:
                return
            if time.monotonic() >= deadline or (self._proc is not None and not self._proc.alive()):
                raise ServiceError(f"pg_isready: {result.stdout.strip()}")
            time.sleep(0.1)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL statement through psql and return its unaligned output."""
        result = subprocess.run(
            [str(PG_BIN / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(database)],
            input=sql,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create ``name`` unless it exists; return its DSN."""
        for ident in (name, template or name):
            if not _IDENT.fullmatch(ident):
                raise ServiceError(f"{ident!r} is not a plain database name (a-z, 0-9, _)")
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")  # noqa: S608 - checked
        if not exists:
            tmpl = f' TEMPLATE "{template}"' if template else ""
            self.psql(f'CREATE DATABASE "{name}"{tmpl}')
        return self.dsn(name)

    def running(self) -> bool:
        """Whether the server process runs."""
        return self._proc is not None and self._proc.alive()

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown (committed data is safe, a checkpoint is written). Idempotent."""
        if self._proc is not None:
            self._proc.stop(signal.SIGINT, timeout)
            self._proc = None

    def kill(self) -> None:
        """Crash the server (SIGKILL), as a power cut would; recovery replays the WAL on start."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait_stopped()
            self._proc = None
