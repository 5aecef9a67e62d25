"""Fixtures of the consumer tests."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devstack.postgres import PostgresCluster
from devstack.process import free_port


@pytest.fixture
async def own_cluster() -> AsyncIterator[PostgresCluster]:
    """A PostgreSQL cluster of this test alone, so stopping it does not disturb other tests."""
    # Not under pytest's base temp dir: every pytest session that starts takes the group and other
    # permissions off that tree again, and the server (another OS user) could then neither restart
    # nor be stopped by pg_ctl mid-test while another session runs on the same machine.
    with tempfile.TemporaryDirectory(prefix="cityingest-pg-") as tmp:
        cluster = PostgresCluster(
            Path(tmp) / "pg",
            free_port(),
            settings={"fsync": "off", "shared_buffers": "'128MB'", "timescaledb.max_background_workers": "0"},
        )
        await asyncio.to_thread(cluster.start)
        try:
            yield cluster
        finally:
            await asyncio.to_thread(cluster.stop)
