"""A tiny HTTP/1.1 server for ``/metrics``, ``/healthz`` and ``/readyz`` (no framework on purpose).

``/healthz`` answers 200 while the bridge runs (503 once its main task died: restart it); ``/readyz``
answers 200 only while the bridge takes traffic (MQTT subscribed, Kafka reachable, acks advancing while
messages wait) and 503 with the reasons otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

import orjson

log = logging.getLogger(__name__)

_REASONS: Final = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_MAX_REQUEST_HEAD: Final = 8192
_READ_TIMEOUT_S: Final = 10.0


class HealthServer:
    """Serves the bridge's operational endpoints on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Callable[[], tuple[bytes, str]],
        not_ready_reasons: Callable[[], list[str]],
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        self._host = host
        self._healthy = healthy
        self._port = port
        self._metrics = metrics
        self._not_ready = not_ready_reasons
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("bridge HTTP endpoints on http://%s:%s/", self._host, self.port)

    async def stop(self) -> None:
        """Stop listening and drop open connections. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    def _respond(self, method: str, path: str) -> tuple[int, bytes, str]:
        if method not in ("GET", "HEAD"):
            return 405, b"", "text/plain"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = self._metrics()
            return 200, body, content_type
        if path == "/healthz":
            if self._healthy():
                return 200, b'{"status":"ok"}', "application/json"
            return 503, b'{"status":"failed"}', "application/json"
        if path == "/readyz":
            reasons = self._not_ready()
            status = 503 if reasons else 200
            doc = {"status": "not ready" if reasons else "ready", "reasons": reasons}
            return status, orjson.dumps(doc), "application/json"
        return 404, b"", "text/plain"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_REQUEST_HEAD:
                return
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, body, content_type = self._respond(method, path)
            headers = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(headers.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (
            TimeoutError,
            ValueError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # a client that hangs up or speaks nonsense gets nothing
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
