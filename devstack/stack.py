"""``cityingest dev``: the whole pipeline on this machine, from real services, without Docker.

Start order: PostgreSQL+TimescaleDB, Mosquitto, Tansu; migrations and topics; then the API, the
consumer(s), the bridge and the simulator as child processes of ours. Stop order is the reverse and
drains the pipeline: the simulator stops publishing, the bridge forwards what it took, the consumer
applies what Kafka holds (Tansu keeps records in memory only), then the services stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field

from api.auth import Scope, parse_key
from api.keys import create_api_key, key_has_scopes, revoke_api_key
from consumers.settings import ConsumerSettings
from core.runtime import Backoff
from core.settings import MqttSettings
from devstack.certs import DevCertificates, ensure_certificates
from devstack.demo import DemoDevice, demo_device
from devstack.dynsec import BRIDGE_USERNAME, anonymous_commands, bridge_commands, run_commands
from devstack.kafka import ensure_topics
from devstack.lag import forget_offsets, total_lag
from devstack.mosquitto import DYNSEC_ADMIN, BrokerSecurity, MosquittoBroker
from devstack.postgres import PostgresCluster
from devstack.process import ChildProcess, ServiceError, free_port, port_is_free, wait_healthy
from devstack.runfile import remove_run_file, write_run_file
from devstack.secrets import state_secret
from devstack.settings import DevSettings
from devstack.supervise import ServiceWatch, restart_backoff
from devstack.tansu import TansuBroker
from migrations import apply_migrations

log = logging.getLogger(__name__)

DATABASE = "cityingest"


def _pick_port(settings: DevSettings, name: str, host: str = "127.0.0.1") -> int:
    """The configured port; when it is only the default and busy, a free one instead."""
    port: int = getattr(settings, name)
    if port_is_free(port, host):
        return port
    if name in settings.model_fields_set:
        raise ServiceError(f"port {port} (--{name.replace('_', '-')}) is in use; pick another")
    chosen = free_port(host)
    log.warning("default %s %d is busy; using %d", name.replace("_", " "), port, chosen)
    return chosen


@dataclass
class Component:
    """A cityingest process the stack supervises (restarted with backoff if it dies)."""

    name: str
    health_url: str | None
    proc: ChildProcess
    finished_ok: bool = False
    """A component that may finish on its own (the simulator with a count) is not restarted after exit 0."""
    restarts: int = 0
    next_restart: float = 0.0
    backoff: Backoff = field(default_factory=restart_backoff)

    def start(self) -> None:
        """Start the process (its backoff counts healthy time from now)."""
        self.proc.start()
        self.backoff.started()

    def respawn(self) -> None:
        """Start a fresh process with the same command, environment and log."""
        old = self.proc
        self.proc = ChildProcess(old.name, old.argv, log_path=old.log_path, env=old.env)
        self.start()
        self.next_restart = 0.0


@dataclass
class Endpoints:
    """Where each part of the running stack can be reached."""

    api: str = ""
    mqtt: str = ""
    mqtt_cert: str = ""
    mqtt_plain: str = ""
    kafka: str = ""
    database: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class DevStack:
    """The embedded stack: services, components, and the order they start and stop in."""

    def __init__(self, settings: DevSettings) -> None:
        self.settings = settings
        self.state = settings.state_dir.resolve()
        self.logs = self.state / "logs"
        self.pg: PostgresCluster | None = None
        self.mqtt: MosquittoBroker | None = None
        self.kafka: TansuBroker | None = None
        self.components: list[Component] = []
        self.endpoints = Endpoints()
        self.api_key = ""
        self.key_file = self.state / "dev-api-key"
        self.client_id_secret_file = self.state / "mqtt-client-id-secret"
        self.admin_password_file = self.state / "mqtt-admin-password"
        self.bridge_password_file = self.state / "mqtt-bridge-password"
        self.certs = DevCertificates(self.state / "ca")
        self.prefix = MqttSettings().mqtt_topic_prefix
        self.demo: DemoDevice | str | None = None
        """The demo device's credential for the printed mosquitto_pub command, or why there is none."""
        self.watches: list[ServiceWatch] = []
        # The consumers read their group from the same environment; the drain must ask about that group.
        self._group = ConsumerSettings().group_id

    def _topics(self) -> dict[str, int]:
        """The topics the stack creates: readings (partitioned) and dead letters, as configured."""
        return {self.settings.readings_topic: self.settings.kafka_partitions, self.settings.dlq_topic: 1}

    # -- services -----------------------------------------------------------------------------
    def start_services(self) -> None:
        """Start PostgreSQL+TimescaleDB, Mosquitto and Tansu (blocking; run in a thread)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        s = self.settings
        self.pg = PostgresCluster(self.state / "pg", _pick_port(s, "pg_port"))
        self.pg.start()
        self.endpoints.database = self.pg.create_database(DATABASE)
        self.mqtt = self._start_mqtt()
        self.kafka = TansuBroker(self.logs, _pick_port(s, "kafka_port"))
        self.kafka.start()
        self.endpoints.kafka = self.kafka.bootstrap
        self.watches = [
            ServiceWatch("PostgreSQL", self.pg, consequence="nothing committed is lost (WAL recovery)"),
            ServiceWatch(
                "Mosquitto",
                self.mqtt,
                consequence="messages acknowledged to devices since its last save to "
                f"{self.mqtt.state_dir} are lost unless the bridge had taken them",
            ),
            ServiceWatch(
                "Tansu",
                self.kafka,
                before_restart=self._stop_kafka_clients,
                after_restart=self._kafka_replaced,
                consequence="Tansu keeps records in memory only: every record the consumers had not "
                "applied yet is LOST",
            ),
        ]

    def _start_mqtt(self) -> MosquittoBroker:
        """Certificates, the dynamic security file and its admin, the broker, then the bridge's account."""
        s = self.settings
        self.certs = ensure_certificates(self.state / "ca")
        broker_dir = self.state / "mosquitto"
        if not self.admin_password_file.exists() and (broker_dir / "dynamic-security.json").exists():
            # Nobody can administer a file whose admin password is lost: start a new one. The API's
            # reconciler gives the devices their credentials back from the database.
            lost = broker_dir / "dynamic-security.json"
            lost.replace(lost.with_suffix(".json.orphaned"))
            log.warning("%s had no admin password file: moved aside, a new one is made", lost)
        admin = state_secret(self.admin_password_file)
        bridge = state_secret(self.bridge_password_file)
        plain = _pick_port(s, "mqtt_plain_port") if s.insecure_mqtt else None
        security = BrokerSecurity(
            self.certs.ca_cert,
            self.certs.server_cert,
            self.certs.server_key,
            cert_port=_pick_port(s, "mqtt_cert_port"),
            plain_port=plain,
        )
        broker = MosquittoBroker(broker_dir, _pick_port(s, "mqtt_port"), security=security)
        broker.init_dynsec(admin)
        broker.start()
        try:
            commands = bridge_commands(self.prefix, bridge)
            if s.insecure_mqtt:
                commands += anonymous_commands(self.prefix)
            run_commands(broker.host, broker.port, self.certs.ca_cert, admin, commands)
        except BaseException:
            broker.stop()
            raise
        self.endpoints.mqtt = broker.url
        self.endpoints.mqtt_cert = f"mqtts://{broker.host}:{security.cert_port}"
        if plain is not None:
            self.endpoints.mqtt_plain = f"mqtt://127.0.0.1:{plain}"
        return broker

    async def prepare_store(self) -> None:
        """Migrate the database and create the topics."""
        applied = await apply_migrations(self.endpoints.database)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        # Tansu keeps records in memory: this run's topics are new and start at offset 0, so offsets
        # stored by an earlier run would make the consumer skip this run's first records. Nothing is
        # lost by forgetting them: the last run drained Kafka into the store before it stopped, and
        # the store ignores a reading it already holds.
        await forget_offsets(self.endpoints.database, self.settings.readings_topic)
        await ensure_topics(self.endpoints.kafka, self._topics())
        self.api_key = await self._dev_key()

    async def _dev_key(self) -> str:
        """The development API key with every scope: the one kept in the state directory while it is valid.

        A key that was revoked (or a database that was reset) gets a new key; the old one is revoked.
        """
        path = self.key_file
        scopes = [s.value for s in Scope]
        if path.exists():
            old = path.read_text(encoding="utf-8").strip()
            if await key_has_scopes(self.endpoints.database, old, scopes):
                return old
            parsed = parse_key(old)
            if parsed is not None:
                await revoke_api_key(self.endpoints.database, parsed[0])
        key = await create_api_key(self.endpoints.database, "cityingest dev", scopes)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(key + "\n", encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(path)
        return key

    # -- components ---------------------------------------------------------------------------
    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "CITYINGEST_DATABASE_URL": self.endpoints.database,
                "CITYINGEST_KAFKA_BOOTSTRAP": self.endpoints.kafka,
                "CITYINGEST_KAFKA_IDEMPOTENCE": "false",  # Tansu has no idempotent producer support
                "CITYINGEST_KAFKA_PARTITIONS": str(self.settings.kafka_partitions),
                "CITYINGEST_MQTT_HOST": "127.0.0.1",
                "CITYINGEST_MQTT_PORT": str(self.mqtt.port if self.mqtt else 0),
                # Every component reaches the broker over TLS, trusting the dev CA only.
                "CITYINGEST_MQTT_TLS": "true",
                "CITYINGEST_MQTT_CA_FILE": str(self.certs.ca_cert),
                "CITYINGEST_LOG_LEVEL": self.settings.log_level,
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _add(
        self,
        name: str,
        args: list[str],
        health_url: str | None,
        *,
        finished_ok: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        argv = [sys.executable, "-m", "cli", *args]
        full_env = self._base_env() | (env or {})
        proc = ChildProcess(name, argv, log_path=self.logs / f"{name}.log", env=full_env)
        self.components.append(Component(name, health_url, proc, finished_ok))

    def plan_components(self) -> None:
        """Decide the component processes and their ports."""
        s = self.settings
        api_port = _pick_port(s, "api_port", s.api_host)
        self.endpoints.api = f"http://{s.api_host}:{api_port}"
        names = ["consumer"] if s.consumers == 1 else [f"consumer-{i + 1}" for i in range(s.consumers)]
        ports = {name: free_port() for name in [*names, "bridge"]}
        # The API's operators' overview (/ops) asks each of them for /readyz and /metrics.
        targets = ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in ports.items())
        self._add(
            "api",
            ["api", "--api-host", s.api_host, "--api-port", str(api_port)],
            f"{self.endpoints.api}/healthz",
            env={
                "CITYINGEST_OPS_COMPONENTS": targets,
                # The API issues device credentials and tells the broker through dynamic security; device
                # certificates are signed by the dev CA, the one the broker trusts.
                "CITYINGEST_DYNSEC_ENABLED": "true",
                "CITYINGEST_DYNSEC_USERNAME": DYNSEC_ADMIN,
                "CITYINGEST_DYNSEC_PASSWORD": state_secret(self.admin_password_file),
                "CITYINGEST_DEVICE_CA_CERT_FILE": str(self.certs.ca_cert),
                "CITYINGEST_DEVICE_CA_KEY_FILE": str(self.certs.ca_key),
            },
        )
        for name in names:
            self.endpoints.extra[name] = f"http://127.0.0.1:{ports[name]}/metrics"
            self._add(
                name,
                ["consume", "--http-port", str(ports[name]), "--consumer-id", name],
                f"http://127.0.0.1:{ports[name]}/healthz",
            )
        port = ports["bridge"]
        self.endpoints.extra["bridge"] = f"http://127.0.0.1:{port}/metrics"
        # The bridge's MQTT client id is derived from a secret kept with the state: stable across runs
        # (its persistent session lives under it) and unknown to anyone who could connect and wipe it.
        secret = state_secret(self.client_id_secret_file)
        self._add(
            "bridge",
            ["bridge", "--http-port", str(port), "--bridge-id", "dev-bridge"],
            f"http://127.0.0.1:{port}/healthz",
            env={
                "CITYINGEST_MQTT_CLIENT_ID_SECRET": secret,
                "CITYINGEST_MQTT_USERNAME": BRIDGE_USERNAME,
                "CITYINGEST_MQTT_PASSWORD": state_secret(self.bridge_password_file),
            },
        )
        if s.simulator:
            # The simulator registers the city through the API (started before it) as an asset register
            # would, so that statistics have districts; the key goes by file, out of sight of ps.
            wildcard = s.api_host in ("0.0.0.0", "::", "")  # noqa: S104 - compared, not bound
            host = "127.0.0.1" if wildcard else s.api_host
            url = f"http://[{host}]:{api_port}" if ":" in host else f"http://{host}:{api_port}"
            args = ["--devices", str(s.simulator_devices), "--rate", str(s.simulator_rate), "--live"]
            args += ["--seed", str(s.simulator_seed)]
            args += ["--register-url", url, "--api-key-file", str(self.key_file)]
            # Its devices publish with credentials the API issues them, over TLS: the whole secured path.
            env = {"CITYINGEST_SIM_CREDENTIALS_FROM_API": "true"}
            self._add("simulator", ["simulate", *args], None, finished_ok=True, env=env)

    async def start_components(self, within_s: float = 60.0) -> None:
        """Start every component and wait until each answers its health check."""
        for comp in self.components:
            comp.start()
            if comp.health_url is not None:
                await wait_healthy(comp.proc, comp.health_url, within_s)

    async def wait_ready(self, within_s: float = 120.0) -> None:
        """Wait until every component that has them answers 200 on /readyz (the banner comes after)."""
        for comp in self.components:
            if comp.health_url is not None:
                await wait_healthy(comp.proc, comp.health_url.replace("/healthz", "/readyz"), within_s)

    async def supervise(self) -> None:
        """Restart any service or component that dies, with backoff, and keep Tansu's memory bounded;
        until cancelled."""
        next_check = time.monotonic() + self.settings.kafka_check_interval_s
        while True:
            await asyncio.sleep(0.5)
            for watch in self.watches:
                await watch.check()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self.settings.kafka_check_interval_s
                await self._maybe_rotate_kafka()
            for comp in self.components:
                code = comp.proc.returncode()
                if code is None or not comp.proc.proc or (code == 0 and comp.finished_ok):
                    continue
                now = time.monotonic()
                if comp.next_restart == 0.0:
                    comp.proc.wait_stopped()
                    delay = comp.backoff.delay()
                    comp.next_restart = now + delay
                    log.error(
                        "%s exited with %s; restarting in %.0fs (log: %s)",
                        comp.name,
                        code,
                        delay,
                        comp.proc.log_path,
                    )
                elif now >= comp.next_restart:
                    comp.restarts += 1
                    comp.respawn()

    async def _stop_kafka_clients(self) -> None:
        # The bridges too: a producer that reconnects to the new Tansu before its topics exist has its
        # records acknowledged and then lost when they are created. Mosquitto queues for the bridges.
        for name in ("bridge", "consumer"):
            for comp in self._component(name):
                await asyncio.to_thread(comp.proc.stop)

    async def _kafka_replaced(self) -> None:
        """After Tansu died and restarted empty: recreate the topics, restart the consumers from 0, then
        the bridges."""
        await ensure_topics(self.endpoints.kafka, self._topics())
        # The new topics start at offset 0: offsets stored for the dead broker's records would skip them.
        await forget_offsets(self.endpoints.database, self.settings.readings_topic)
        await self._restart(self._component("consumer"))
        await self._restart(self._component("bridge"))

    async def _maybe_rotate_kafka(self) -> None:
        limit = self.settings.kafka_max_rss_mb
        if self.kafka is None or limit <= 0 or self.kafka.rss_mb() < limit:
            return
        log.info(
            "Tansu holds %.0f MiB (limit %d): rotating it; MQTT buffers meanwhile", self.kafka.rss_mb(), limit
        )
        await self.rotate_kafka()

    async def rotate_kafka(self) -> bool:
        """Give Tansu fresh, empty topics without losing a reading; False if the drain timed out.

        The bridge stops first (Mosquitto queues new messages for its persistent session), the consumers
        apply everything Kafka holds, then Tansu restarts on the same port and the components restart.
        """
        if self.kafka is None:
            return False
        bridges = self._component("bridge")
        for comp in bridges:
            await asyncio.to_thread(comp.proc.stop)
        drained = await self._drain()
        if drained:
            consumers = self._component("consumer")
            for comp in consumers:
                await asyncio.to_thread(comp.proc.stop)
            await asyncio.to_thread(self.kafka.stop)
            await asyncio.to_thread(self.kafka.start)
            await ensure_topics(self.endpoints.kafka, self._topics())
            await forget_offsets(self.endpoints.database, self.settings.readings_topic)
            await self._restart(consumers)
        else:
            log.warning("the consumers did not catch up; Tansu keeps its records until the next check")
        await self._restart(bridges)
        return drained

    async def _restart(self, comps: list[Component]) -> None:
        for comp in comps:
            comp.respawn()
            if comp.health_url is not None:
                await wait_healthy(comp.proc, comp.health_url, 60.0)

    def describe(self) -> str:
        """Every endpoint the stack started, for the user's own clients."""
        lines = [
            "cityingest dev is running. Ctrl-C stops everything.",
            f"  API         {self.endpoints.api}   docs: {self.endpoints.api}/docs   "
            f"dashboard: {self.endpoints.api}/ops",
            f"  MQTT        {self.endpoints.mqtt}   TLS (CA {self.certs.ca_cert}), device id and password; "
            f"publish to {self.prefix}/<domain>/<device_id>/telemetry (QoS 1)",
            f"  MQTT cert   {self.endpoints.mqtt_cert}   TLS with a client certificate of that CA",
        ]
        if self.endpoints.mqtt_plain:
            lines.append(
                f"  MQTT plain  {self.endpoints.mqtt_plain}   --insecure-mqtt: anonymous, no TLS, "
                "telemetry only (experiments)"
            )
        lines += [
            f"  Kafka       {self.endpoints.kafka}   topics: {self.settings.readings_topic} "
            f"({self.settings.kafka_partitions} partitions), {self.settings.dlq_topic}",
            f"  PostgreSQL  {self.endpoints.database}",
        ]
        lines += [f"  {name:<11} {url}" for name, url in self.endpoints.extra.items()]
        lines.append(f"  API key     {self.api_key}   (every scope; also in {self.key_file})")
        lines.append(f"  logs        {self.logs}")
        if isinstance(self.demo, DemoDevice):
            lines.append(
                f"Publish a reading as demo device {self.demo.device_id} "
                "(with the credential the API issued it just now):"
            )
            lines.append(f"  {self.demo.mosquitto_pub(self.mqtt.host if self.mqtt else '127.0.0.1')}")
        elif self.demo is not None:
            lines.append(f"No demo device credential: {self.demo}")
        return "\n".join(lines)

    # -- stopping -----------------------------------------------------------------------------
    def _component(self, name: str) -> list[Component]:
        return [c for c in self.components if c.name == name or c.name.startswith(name + "-")]

    async def stop(self) -> None:
        """Stop in data-safe order: simulator, bridge, drain, consumers, API, then the services."""
        for name in ("simulator", "bridge"):
            for comp in self._component(name):
                await asyncio.to_thread(comp.proc.stop)
        if not await self._drain():
            log.error(
                "stopping Tansu with records the store has not applied: they are lost "
                "(a longer --drain-timeout-s waits for them)"
            )
        for name in ("consumer", "api"):
            for comp in self._component(name):
                await asyncio.to_thread(comp.proc.stop)
        for service in (self.kafka, self.mqtt, self.pg):
            if service is not None:
                await asyncio.to_thread(service.stop)

    async def _drain(self) -> bool:
        """Wait (bounded) until the consumers have applied everything Kafka holds; False on timeout.

        "Everything" is up to each partition's real end (``total_lag``), not Tansu's reported end offset.
        """
        if not self._component("consumer") or self.pg is None or self.kafka is None:
            return True
        deadline = time.monotonic() + self.settings.drain_timeout_s
        lag: int | None = None
        while time.monotonic() < deadline:
            try:
                lag = await total_lag(
                    self.endpoints.kafka, self.endpoints.database, self.settings.readings_topic, self._group
                )
            except ServiceError as exc:
                log.warning("cannot measure consumer lag: %s", exc)
                return False
            if lag <= 0:
                return True
            await asyncio.sleep(0.5)
        log.warning("%s records of readings not yet applied after %.0fs", lag, self.settings.drain_timeout_s)
        return False


async def serve(settings: DevSettings) -> None:
    """Run the embedded stack until cancelled (SIGINT/SIGTERM), then stop every process it started."""
    stack = DevStack(settings)
    starting = asyncio.ensure_future(asyncio.to_thread(stack.start_services))
    try:
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # A thread cannot be cancelled: let it finish so that stop() sees every service it started.
            with contextlib.suppress(Exception):
                await starting
            raise
        await stack.prepare_store()
        stack.plan_components()
        e = stack.endpoints
        write_run_file(stack.state, {"database": e.database, "api": e.api, "mqtt": e.mqtt, "kafka": e.kafka})
        await stack.start_components()
        await stack.wait_ready()
        if stack.mqtt is not None:
            stack.demo = await demo_device(
                stack.endpoints.api, stack.api_key, stack.certs.ca_cert, stack.mqtt.port
            )
        print(stack.describe(), flush=True)
        await stack.supervise()
    finally:
        await asyncio.shield(stack.stop())
        remove_run_file(stack.state)
        print("cityingest dev stopped.", flush=True)
