"""A Mosquitto 2 broker with persistence and without the stock limits that silently drop messages."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Final

from devstack.process import ChildProcess, ServiceError, chown_tree, service_user

MOSQUITTO: Final = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def broker_config(port: int, state_dir: Path, host: str = "127.0.0.1") -> str:
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
            "persistence true",
            f"persistence_location {state_dir}/",
            "autosave_interval 10",
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


class MosquittoBroker:
    """Runs ``mosquitto -c <our config>`` on ``host:port`` with its state under ``state_dir``."""

    def __init__(self, state_dir: Path, port: int, *, host: str = "127.0.0.1") -> None:
        self.state_dir = state_dir
        self.port = port
        self.host = host
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
        conf.write_text(broker_config(self.port, self.state_dir, self.host), encoding="utf-8")
        chown_tree(self.state_dir, self.os_user)
        self._proc = ChildProcess(
            "mosquitto",
            [MOSQUITTO, "-c", str(conf)],
            log_path=self.state_dir / "mosquitto.log",
            user=self.os_user,
        )
        self._proc.start_listening(self.host, self.port, timeout)

    def running(self) -> bool:
        """Whether the broker process runs."""
        return self._proc is not None and self._proc.alive()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the broker (it saves its persistence file on the way out). Idempotent."""
        if self._proc is not None:
            self._proc.stop(signal.SIGTERM, timeout)
            self._proc = None
