"""A Mosquitto 2 broker with persistence and without the stock limits that silently drop messages."""

from __future__ import annotations

import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devstack.process import ChildProcess, ServiceError, ServiceProcess, chown_tree, service_user

MOSQUITTO: Final = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


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


def broker_config(
    port: int, state_dir: Path, host: str = "127.0.0.1", persistence: Persistence = DEFAULT_PERSISTENCE
) -> str:
    """The mosquitto.conf we run with.

    The stock ``max_queued_messages 1000`` drops QoS 1 messages for a subscriber that falls behind
    (the bridge, while Kafka is down): we remove the limit, so a message the broker acknowledged to a
    device is delivered. Persistence keeps queued messages and persistent sessions across restarts.
    """
    return "\n".join(
        [
            "per_listener_settings false",
            f"listener {port} {host}",
            "allow_anonymous true",
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
    ) -> None:
        self.state_dir = state_dir
        self.port = port
        self.host = host
        self.persistence = persistence
        self.os_user = service_user("mosquitto")
        self._proc: ChildProcess | None = None

    @property
    def url(self) -> str:
        """The broker's address as an mqtt:// URL."""
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Write the config and start the broker; return once it accepts connections."""
        if not Path(MOSQUITTO).is_file():
            raise ServiceError("mosquitto is not installed: `apt-get install mosquitto mosquitto-clients`")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        conf = self.state_dir / "mosquitto.conf"
        conf.write_text(
            broker_config(self.port, self.state_dir, self.host, self.persistence), encoding="utf-8"
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
