"""What every long-running cityingest command shares, stdlib only: a probe server, backoff, signals.

* :class:`ProbeServer` serves ``/metrics``, ``/healthz`` (200 while the process does its work, 503 once a
  task of it died: restart me) and ``/readyz`` (200, or 503 with the reasons it does not take traffic);
* :class:`Backoff` is the one capped exponential backoff, reset after a period of health;
* :func:`run_until_signalled` runs a service coroutine until SIGINT/SIGTERM cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

log = logging.getLogger(__name__)

_REASONS: Final = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_MAX_REQUEST_HEAD: Final = 8192
_READ_TIMEOUT_S: Final = 10.0
_JSON: Final = "application/json"

Metrics = Callable[[], tuple[bytes, str]]
"""Returns the Prometheus exposition body and its content type."""


class ProbeServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` of one component on ``host:port`` (0 picks a free port)."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        metrics: Metrics,
        not_ready_reasons: Callable[[], list[str]],
        healthy: Callable[[], bool],
    ) -> None:
        self._name = name
        self._host = host
        self._port = port
        self._metrics = metrics
        self._not_ready = not_ready_reasons
        self._healthy = healthy
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("%s probes on http://%s:%s/", self._name, self._host, self.port)

    async def stop(self) -> None:
        """Stop listening. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    def respond(self, method: str, path: str) -> tuple[int, bytes, str]:
        """Status, body and content type for one request (pure: the server only frames it)."""
        if method not in ("GET", "HEAD"):
            return 405, b'{"status":"method not allowed"}', _JSON
        path = path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = self._metrics()
            return 200, body, content_type
        if path == "/healthz":
            if self._healthy():
                return 200, b'{"status":"ok"}', _JSON
            return 503, b'{"status":"failed"}', _JSON
        if path == "/readyz":
            reasons = self._not_ready()
            doc = {"status": "not ready" if reasons else "ready", "reasons": reasons}
            return (503 if reasons else 200), json.dumps(doc).encode("utf-8"), _JSON
        return 404, b'{"status":"not found"}', _JSON

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_REQUEST_HEAD:
                return
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, body, content_type = self.respond(method, path)
            headers = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(headers.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            log.debug(
                "bad or aborted probe request", exc_info=True
            )  # a client speaking nonsense gets nothing
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class Backoff:
    """Capped exponential backoff: ``initial``, growing by ``factor`` up to ``maximum``.

    With ``healthy_after_s``, a failure that comes at least that long after the last (re)start (see
    :meth:`started`; by default the end of the last delay) starts over at ``initial``: a component that
    ran well for a while and fails once is retried quickly again, one that keeps failing ever more slowly.
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        factor: float = 2.0,
        healthy_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < initial <= maximum or factor < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and factor >= 1")
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self._healthy_after = healthy_after_s
        self._clock = clock
        self._next = initial
        self._since = clock()
        self.failures = 0
        """Failures since the last reset."""

    def started(self) -> None:
        """The guarded thing (re)started, or succeeded, now: healthy time counts from here."""
        self._since = self._clock()

    def delay(self) -> float:
        """The delay before the next attempt after a failure now; the following one grows."""
        now = self._clock()
        if self._healthy_after is not None and now - self._since >= self._healthy_after:
            self.reset()
        self.failures += 1
        delay, self._next = self._next, min(self._next * self.factor, self.maximum)
        self._since = now + delay
        return delay

    def reset(self) -> None:
        """Start over at ``initial`` (the dependency answered, or the component was healthy long enough)."""
        self._next = self.initial
        self.failures = 0

    async def sleep(self) -> float:
        """Sleep for :meth:`delay`; return how long."""
        delay = self.delay()
        await asyncio.sleep(delay)
        return delay


async def run_until_signalled(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro``; SIGINT or SIGTERM cancels it so that it shuts down through its own cleanup."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
        log.info("stopped by signal")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
