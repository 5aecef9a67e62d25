"""A Mosquitto 2 broker with persistence and without the stock limits that silently drop messages.

Without :class:`BrokerSecurity` it has one plain anonymous listener (the test services). With it (the dev
stack): the dynamic security plugin authenticates and authorizes every client, the main listener speaks
TLS only, an optional second TLS listener requires a client certificate and takes its common name as the
user name, and an optional plain listener on the loopback address admits anonymous clients
(``cityingest dev --insecure-mqtt``).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devstack.certs import write_private
from devstack.process import ChildProcess, ServiceError, ServiceProcess, chown_tree, service_user

MOSQUITTO: Final = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_CTRL: Final = shutil.which("mosquitto_ctrl") or "/usr/bin/mosquitto_ctrl"
DYNSEC_PLUGIN: Final = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
"""Debian's path of the dynamic security plugin (``dpkg -L mosquitto | grep dynamic``)."""
DYNSEC_ADMIN: Final = "cityingest-admin"
"""The dynamic security administrator (role ``admin``) that ``mosquitto_ctrl dynsec init`` creates."""


@dataclass(frozen=True)
class Persistence:
    """When Mosquitto writes its in-memory state (sessions, queued messages) to disk.

    What it acknowledged since its last save is lost if it dies by kill -9 or a crash (a clean stop
    saves). Every save writes the whole database, so its cost grows with the backlog queued for the
    bridge; ``bench/mosquitto_persist.py`` measured the choices (docs/benchmarks.md).
    """

    enabled: bool = True
    autosave_interval: int = 1
    """Seconds between saves; with ``autosave_on_changes``, changes (messages queued, ...) between saves."""
    autosave_on_changes: bool = False

    def lines(self, state_dir: Path) -> list[str]:
        """The mosquitto.conf lines for this choice."""
        if not self.enabled:
            return ["persistence false"]
        return [
            "persistence true",
            f"persistence_location {state_dir}/",
            f"autosave_interval {self.autosave_interval}",
            f"autosave_on_changes {'true' if self.autosave_on_changes else 'false'}",
        ]


DEFAULT_PERSISTENCE: Final = Persistence()


@dataclass(frozen=True)
class BrokerSecurity:
    """TLS files, the dynamic security file and the extra listeners of a secured broker.

    The broker reads copies of the CA certificate, its certificate and its key that
    :meth:`MosquittoBroker.start` places in its own state directory (it runs as the ``mosquitto`` user,
    which must not read the CA's key).
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    cert_port: int | None = None
    """A TLS listener that requires a client certificate signed by the CA (identity as user name)."""
    plain_port: int | None = None
    """A plain listener admitting anonymous clients; anonymous clients are then admitted on every listener
    (Mosquitto 2.0's ``allow_anonymous`` is global with the plugin's ``per_listener_settings false``)."""

    @property
    def anonymous(self) -> bool:
        """Whether anonymous clients are admitted (only with the plain listener)."""
        return self.plain_port is not None


DYNSEC_FILE: Final = "dynamic-security.json"
_TLS_FILES: Final = {"cafile": "tls-ca.pem", "certfile": "tls-server.pem", "keyfile": "tls-server.key"}


def _security_lines(port: int, host: str, state_dir: Path, security: BrokerSecurity) -> list[str]:
    tls = [f"{option} {state_dir / name}" for option, name in _TLS_FILES.items()]
    tls.append("tls_version tlsv1.2")
    lines = [
        f"plugin {DYNSEC_PLUGIN}",
        f"plugin_opt_config_file {state_dir / DYNSEC_FILE}",
        f"allow_anonymous {'true' if security.anonymous else 'false'}",
        f"listener {port} {host}",
        *tls,
    ]
    if security.cert_port is not None:
        lines += [
            f"listener {security.cert_port} {host}",
            *tls,
            "require_certificate true",
            "use_identity_as_username true",
            "use_username_as_clientid true",
        ]
    if security.plain_port is not None:
        lines.append(f"listener {security.plain_port} 127.0.0.1")
    return lines


def broker_config(
    port: int,
    state_dir: Path,
    host: str = "127.0.0.1",
    persistence: Persistence = DEFAULT_PERSISTENCE,
    security: BrokerSecurity | None = None,
) -> str:
    """The mosquitto.conf we run with.

    The stock ``max_queued_messages 1000`` drops QoS 1 messages for a subscriber that falls behind
    (the bridge, while Kafka is down): we remove the limit, so a message the broker acknowledged to a
    device is delivered. Persistence keeps queued messages and persistent sessions across restarts.
    """
    if security is None:
        listeners = [f"listener {port} {host}", "allow_anonymous true"]
    else:
        listeners = _security_lines(port, host, state_dir, security)
    return "\n".join(
        [
            "per_listener_settings false",
            *listeners,
            *persistence.lines(state_dir),
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            "persistent_client_expiration 7d",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
            "",
        ]
    )


class MosquittoBroker(ServiceProcess):
    """Runs ``mosquitto -c <our config>`` on ``host:port`` with its state under ``state_dir``."""

    def __init__(
        self,
        state_dir: Path,
        port: int,
        *,
        host: str = "127.0.0.1",
        persistence: Persistence = DEFAULT_PERSISTENCE,
        security: BrokerSecurity | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.port = port
        self.host = host
        self.persistence = persistence
        self.security = security
        self.os_user = service_user("mosquitto")
        self._proc: ChildProcess | None = None

    @property
    def url(self) -> str:
        """The broker's address as an mqtt:// URL (mqtts:// when its listener speaks TLS)."""
        scheme = "mqtt" if self.security is None else "mqtts"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def dynsec_file(self) -> Path:
        """The dynamic security plugin's JSON file (the broker rewrites it on every change)."""
        return self.state_dir / DYNSEC_FILE

    def init_dynsec(self, admin_password: str) -> bool:
        """Create the dynamic security file with its admin client, before the first start; False if it exists.

        ``mosquitto_ctrl dynsec init`` also sets the default ACL access the contract wants: devices
        publish nothing and subscribe to nothing unless a role allows it.
        """
        if self.dynsec_file.exists():
            return False
        if not Path(MOSQUITTO_CTRL).is_file():
            raise ServiceError("mosquitto_ctrl is not installed: `apt-get install mosquitto-clients`")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [MOSQUITTO_CTRL, "dynsec", "init", str(self.dynsec_file), DYNSEC_ADMIN, admin_password],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ServiceError(
                f"mosquitto_ctrl dynsec init failed: {done.stderr.strip() or done.stdout.strip()}"
            )
        self.dynsec_file.chmod(0o600)
        return True

    def start(self, timeout: float = 30.0) -> None:
        """Write the config and start the broker; return once it accepts connections."""
        if not Path(MOSQUITTO).is_file():
            raise ServiceError("mosquitto is not installed: `apt-get install mosquitto mosquitto-clients`")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.security is not None:
            if not Path(DYNSEC_PLUGIN).is_file():
                raise ServiceError(
                    f"the dynamic security plugin {DYNSEC_PLUGIN} is missing: `apt-get install mosquitto`"
                )
            if not self.dynsec_file.exists():
                raise ServiceError(f"{self.dynsec_file} is missing: init_dynsec() first")
            sources = (self.security.ca_file, self.security.cert_file, self.security.key_file)
            for source, name in zip(sources, _TLS_FILES.values(), strict=True):
                write_private(self.state_dir / name, source.read_bytes())
        conf = self.state_dir / "mosquitto.conf"
        conf.write_text(
            broker_config(self.port, self.state_dir, self.host, self.persistence, self.security),
            encoding="utf-8",
        )
        chown_tree(self.state_dir, self.os_user)
        self._proc = ChildProcess(
            "mosquitto",
            [MOSQUITTO, "-c", str(conf)],
            log_path=self.state_dir / "mosquitto.log",
            user=self.os_user,
        )
        self._proc.start_listening(self.host, self.port, timeout)

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.alive() else None

    def kill(self) -> None:
        """Crash the broker (SIGKILL): what it acknowledged since its last save is lost."""
        if self._proc is not None:
            self._proc.kill()

    def running(self) -> bool:
        """Whether the broker process runs."""
        return self._proc is not None and self._proc.alive()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the broker (it saves its persistence file on the way out). Idempotent."""
        if self._proc is not None:
            self._proc.stop(signal.SIGTERM, timeout)
            self._proc = None
