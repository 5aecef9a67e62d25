"""The pipeline under test: private services in a work directory and cityingest's own processes started
through the real command line (``python -m cli bridge|consume|api``), one OS process each.

Also the device side (``bench.simpub`` processes) and the cheap progress queries the benchmark polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Final

import asyncpg

from api.keys import create_api_key
from bench.ingest import REJECTED, scrape
from bench.procmem import Watched, Watcher, pids_with_argument
from devstack.kafka import ensure_topics
from devstack.mosquitto import MosquittoBroker
from devstack.postgres import PostgresCluster
from devstack.process import ChildProcess, ServiceError, free_port, wait_healthy
from devstack.tansu import TansuBroker
from migrations import apply_migrations
from simulator.settings import SimulatorSettings

ROOT: Final = Path(__file__).resolve().parents[1]
DATABASE: Final = "cityingest"
TOPIC: Final = "readings"
SCOPES: Final = ("metrics:read", "statistics:read", "ops:read")


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own loopback URL
        return str(response.read().decode())


def child_env(**values: str) -> dict[str, str]:
    """Our environment without any ``CITYINGEST_*`` of the caller's shell, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYINGEST_")}
    env.update({f"CITYINGEST_{k.upper()}": v for k, v in values.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Pipeline:
    """PostgreSQL+TimescaleDB, Mosquitto, Tansu, then the API, consumer(s) and bridge as child processes."""

    def __init__(
        self, workdir: Path, *, partitions: int, consumers: int, extra_env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.partitions = partitions
        self.consumers = consumers
        self.extra_env = extra_env or {}
        """More ``CITYINGEST_*`` settings (name without the prefix) for our processes, for experiments."""
        self.pg = PostgresCluster(workdir / "pg", free_port())
        self.mqtt = MosquittoBroker(workdir / "mosquitto", free_port())
        self.kafka = TansuBroker(self.logs, free_port())
        self.dsn = ""
        self.api = ""
        self.api_key = ""
        self.bridge_port = free_port()
        self.procs: list[ChildProcess] = []
        self._conn: asyncpg.Connection | None = None

    def _start_services(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pg.start()
        self.dsn = self.pg.create_database(DATABASE)
        self.mqtt.start()
        self.kafka.start()

    async def start(self) -> None:
        """Start everything and wait until each of our processes answers its health check."""
        await asyncio.to_thread(self._start_services)
        await apply_migrations(self.dsn)
        await ensure_topics(self.kafka.bootstrap, {TOPIC: self.partitions, f"{TOPIC}.dlq": 1})
        self.api_key = await create_api_key(self.dsn, "bench e2e", SCOPES)
        settings = {
            "database_url": self.dsn,
            "kafka_bootstrap": self.kafka.bootstrap,
            "kafka_idempotence": "false",  # Tansu has no idempotent producer
            "mqtt_host": "127.0.0.1",
            "mqtt_port": str(self.mqtt.port),
            "log_level": "WARNING",
        }
        env = child_env(**{**settings, **self.extra_env})
        api_port = free_port()
        self.api = f"http://127.0.0.1:{api_port}"
        plan = [("api", ["api", "--api-port", str(api_port)], f"{self.api}/healthz")]
        for i in range(self.consumers):
            port = free_port()
            name = "consumer" if self.consumers == 1 else f"consumer-{i + 1}"
            health = f"http://127.0.0.1:{port}/healthz"
            plan.append((name, ["consume", "--http-port", str(port), "--consumer-id", name], health))
        bridge = ["bridge", "--http-port", str(self.bridge_port), "--bridge-id", "bench-bridge"]
        plan.append(("bridge", [*bridge, "--client-id", "bench-bridge"], self.bridge_url("/readyz")))
        for name, args, health in plan:
            proc = ChildProcess(
                name,
                [sys.executable, "-m", "cli", *args],
                log_path=self.logs / f"{name}.log",
                env=env,
                cwd=ROOT,
            )
            self.procs.append(proc)
            proc.start()
            await wait_healthy(proc, health, 60.0)
        self._conn = await asyncpg.connect(self.dsn)

    def bridge_url(self, path: str) -> str:
        """A URL of the bridge's HTTP endpoints."""
        return f"http://127.0.0.1:{self.bridge_port}{path}"

    def watch(self, watcher: Watcher) -> None:
        """Register our processes (held to the memory target) and the services (for information)."""
        for proc in self.procs:
            watcher.watch(Watched(proc.name, functools.partial(_pid_of, proc), ours=True))
        pidfile = self.pg.data_dir / "postmaster.pid"
        watcher.watch(Watched("postgres", functools.partial(_postmaster, pidfile), ours=False, tree=True))
        mosquitto = pids_with_argument(str(self.mqtt.state_dir / "mosquitto.conf"))
        watcher.watch(Watched("mosquitto", functools.partial(_running, mosquitto), ours=False))
        tansu = pids_with_argument(f"tcp://{self.kafka.host}:{self.kafka.port}")[:1]
        watcher.watch(Watched("tansu", functools.partial(_running, tansu), ours=False))

    def dead(self) -> list[str]:
        """Names of our processes that are no longer running."""
        return [p.name for p in self.procs if not p.alive()]

    async def offsets(self) -> int:
        """Records of the readings topic applied to the store."""
        conn = self._require()
        value = await conn.fetchval(
            "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1", TOPIC
        )
        return int(value)

    async def rollup_readings(self) -> int:
        """Readings counted in the monthly rollups (the smallest level; all levels are written together)."""
        value = await self._require().fetchval("SELECT coalesce(sum(count), 0) FROM readings_monthly")
        return int(value)

    async def device_readings(self, device_id: str) -> tuple[int, int]:
        """(raw rows, readings in the monthly rollups) of one device."""
        conn = self._require()
        raw = await conn.fetchval("SELECT count(*) FROM readings WHERE device_id = $1", device_id)
        monthly = await conn.fetchval(
            "SELECT coalesce(sum(count), 0) FROM readings_monthly WHERE device_id = $1", device_id
        )
        return int(raw), int(monthly)

    async def bridge_rejections(self) -> Counter[str]:
        """The bridge's rejected payloads and readings by reason code."""
        text = await asyncio.to_thread(_get_text, self.bridge_url("/metrics"))
        return Counter({m[1]: int(float(m[2])) for m in REJECTED.finditer(text)})

    async def bridge_stats(self) -> dict[str, float]:
        """The bridge's counters (``cityingest_bridge_*``)."""
        return await asyncio.to_thread(scrape, self.bridge_port)

    def _require(self) -> asyncpg.Connection:
        if self._conn is None:
            raise ServiceError("the pipeline is not started")
        return self._conn

    async def stop(self) -> None:
        """Stop our processes (bridge first), then the services. Idempotent."""
        if self._conn is not None:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await self._conn.close()
            self._conn = None
        for proc in reversed(self.procs):
            await asyncio.to_thread(proc.stop)
        for service in (self.kafka, self.mqtt, self.pg):
            await asyncio.to_thread(service.stop)


def _pid_of(proc: ChildProcess) -> list[int]:
    return [proc.pid] if proc.pid is not None and proc.alive() else []


def _running(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def _postmaster(pidfile: Path) -> list[int]:
    try:
        return [int(pidfile.read_text(encoding="ascii").split()[0])]
    except (OSError, ValueError, IndexError):
        return []


class DeviceProcess:
    """One ``python -m bench.simpub`` process: generates, says it is ready, publishes on ``go``."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.name = name
        self.settings_path = workdir / f"{name}.settings.json"
        self.truth_path = workdir / f"{name}.truth.json"
        self.result_path = workdir / f"{name}.result.json"
        self.log_path = workdir / "logs" / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: dict[str, int] = {}

    @property
    def pids(self) -> list[int]:
        """The process id while it runs."""
        return [self.proc.pid] if self.proc is not None and self.proc.returncode is None else []

    async def start(self, settings: SimulatorSettings, mqtt_port: int, *extra: str) -> dict[str, int]:
        """Start the process and wait (generation included) until it is connected and ready."""
        self.settings_path.write_text(settings.model_dump_json(), encoding="utf-8")
        argv = ["--settings", str(self.settings_path), "--mqtt-port", str(mqtt_port)]
        argv += ["--truth", str(self.truth_path), "--result", str(self.result_path), *extra]
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.simpub", *argv,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, cwd=ROOT,
                env=child_env(),
            )  # fmt: skip
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 300)
        if not line:
            raise ServiceError(f"{self.name} exited before it was ready; see {self.log_path}")
        self.ready = json.loads(line)["ready"]
        return self.ready

    async def go(self) -> None:
        """Tell it to publish."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    async def finish(self, within_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """Wait for it to end; (its result, the truth it wrote)."""
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), within_s)
        if code != 0:
            raise ServiceError(f"{self.name} exited with {code}; see {self.log_path}")
        result = json.loads(self.result_path.read_text(encoding="utf-8"))
        truth = json.loads(self.truth_path.read_text(encoding="utf-8"))
        return result, truth

    async def kill(self) -> None:
        """Kill it if it still runs."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
