"""HTTP GETs of the components' /readyz and /metrics, through httpx with bounded time, size and connections.

One :class:`httpx.AsyncClient` per overview poll serves every component. The environment's proxy settings
are ignored (the components are on the internal network), redirects are not followed, and a body larger
than :data:`MAX_BYTES` is refused. httpx bounds each connect and read; the caller bounds the whole GET
(``asyncio.timeout``), so a server that trickles bytes still costs at most the timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import httpx

MAX_BYTES: Final = 4 * 1024 * 1024
MAX_CONNECTIONS: Final = 64
"""At most this many components are asked at once; the others wait for a free connection."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """Status and body of one answer."""

    status: int
    body: bytes


def probe_client(timeout_s: float) -> httpx.AsyncClient:
    """The client of one poll: ``timeout_s`` per connect and read, no proxies, no redirects, no keep-alive."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s),
        # The probe servers close the connection after each answer: nothing to keep alive.
        limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=0),
        trust_env=False,
        follow_redirects=False,
        headers={"User-Agent": "cityingest-api", "Accept": "*/*"},
    )


async def http_get(client: httpx.AsyncClient, url: str, host_header: str) -> HttpAnswer:
    """GET ``url`` sending ``Host: host_header``; httpx.HTTPError when unreachable or not HTTP.

    ValueError when the body is larger than :data:`MAX_BYTES`.
    """
    async with client.stream("GET", url, headers={"Host": host_header}) as response:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_BYTES:
                raise ValueError(f"answer larger than {MAX_BYTES} bytes")
    return HttpAnswer(response.status_code, bytes(body))
