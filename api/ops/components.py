"""Ask each configured bridge and consumer for /readyz and /metrics, all at once, each within a timeout.

A component that hangs costs the overview at most ``timeout_s``; one that is down costs a refused
connection. Neither keeps the others from being reported. One httpx client (:mod:`api.ops.http`) serves
the whole poll.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import orjson

from api.ops.config import ComponentTarget
from api.ops.http import HttpAnswer, http_get, probe_client
from api.ops.models import HealthState
from api.ops.prom import Kind, Scrape, parse_metrics

_DETAIL_CHARS = 300


@dataclass(frozen=True, slots=True)
class Instance:
    """One address to ask: a configured target, or one address of a discovered one."""

    name: str
    address: str
    port: int
    host_header: str

    def path_url(self, path: str) -> str:
        """The URL of ``path`` on this address."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}{path}"

    @property
    def url(self) -> str:
        """The /readyz URL, for the report."""
        return self.path_url("/readyz")


@dataclass(frozen=True, slots=True)
class ComponentReport:
    """What one instance answered: its health and, when /metrics was readable, its counters."""

    name: str
    url: str | None
    state: HealthState
    detail: str | None
    latency_ms: float | None = None
    scrape: Scrape = field(default_factory=lambda: Scrape("component"))

    @property
    def kind(self) -> Kind:
        """bridge or consumer, as its metrics tell; ``component`` when unknown."""
        return self.scrape.kind


async def probe_all(targets: Sequence[ComponentTarget], timeout_s: float) -> list[ComponentReport]:
    """One report per instance of every target, in configuration order, within about twice ``timeout_s``."""
    groups = await asyncio.gather(*(_instances(t, timeout_s) for t in targets))

    async with probe_client(timeout_s) as client:

        async def answer(item: Instance | ComponentReport) -> ComponentReport:
            return item if isinstance(item, ComponentReport) else await probe(client, item, timeout_s)

        return list(await asyncio.gather(*(answer(item) for group in groups for item in group)))


async def _instances(target: ComponentTarget, timeout_s: float) -> list[Instance | ComponentReport]:
    if not target.discover:
        return [Instance(target.name, target.host, target.port, target.netloc)]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        return [ComponentReport(target.name, None, "down", f"cannot resolve {target.host}: {exc!r}")]
    addresses = sorted({str(info[4][0]) for info in infos})
    return [Instance(f"{target.name}@{a}", a, target.port, target.netloc) for a in addresses]


async def probe(client: httpx.AsyncClient, instance: Instance, timeout_s: float) -> ComponentReport:
    """/readyz and /metrics of one instance, asked concurrently; ``down`` if /readyz does not answer."""
    started = time.monotonic()

    async def get(path: str) -> HttpAnswer:
        async with asyncio.timeout(timeout_s):
            return await http_get(client, instance.path_url(path), instance.host_header)

    ready, metrics = await asyncio.gather(get("/readyz"), get("/metrics"), return_exceptions=True)
    if isinstance(ready, BaseException):
        return ComponentReport(instance.name, instance.url, "down", _error_text(ready, timeout_s))
    latency_ms = (time.monotonic() - started) * 1000
    state: HealthState = "up" if ready.status == 200 else "degraded"
    notes = [] if ready.status == 200 else [f"/readyz answered {ready.status}: {_readiness_text(ready.body)}"]
    scrape = Scrape("component")
    if isinstance(metrics, BaseException):
        notes.append(f"/metrics: {_error_text(metrics, timeout_s)}")
    elif metrics.status != 200:
        notes.append(f"/metrics answered {metrics.status}")
    else:
        try:
            scrape = parse_metrics(metrics.body.decode("utf-8", "replace"))
        except ValueError as exc:
            notes.append(f"/metrics is unreadable: {exc}")
    detail = "; ".join(notes)[:_DETAIL_CHARS] or None
    return ComponentReport(instance.name, instance.url, state, detail, latency_ms, scrape)


def _error_text(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, httpx.ConnectError):
        # httpx does not say whether the connection was refused or the address is unreachable.
        return f"cannot connect: {exc} (not running?)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _readiness_text(body: bytes) -> str:
    """The reasons a bridge gives, or a consumer's details, as one line."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:_DETAIL_CHARS].decode("utf-8", "replace")
    if isinstance(doc, dict):
        reasons = doc.get("reasons")
        if isinstance(reasons, list) and reasons:
            return "; ".join(str(r) for r in reasons)
        doc = {k: v for k, v in doc.items() if k != "status"}
    return orjson.dumps(doc).decode()
