"""A minimal HTTP/1.1 GET over asyncio, for the components' /readyz and /metrics.

The API has no HTTP client among its dependencies, and the components' probe servers speak plain
HTTP/1.1 and close the connection after each answer; this is all the overview needs. The caller bounds
the time (``asyncio.timeout``); the size is bounded here.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Final

MAX_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """Status and body of one answer."""

    status: int
    body: bytes


async def http_get(host: str, port: int, path: str, host_header: str) -> HttpAnswer:
    """GET ``path`` from ``host:port``; OSError when unreachable, ValueError when the answer is not HTTP."""
    reader, writer = await asyncio.open_connection(host, port, limit=MAX_BYTES)
    try:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: cityingest-api\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        raw = await reader.read(MAX_BYTES + 1)
        while len(raw) <= MAX_BYTES:
            more = await reader.read(MAX_BYTES + 1 - len(raw))
            if not more:
                break
            raw += more
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if len(raw) > MAX_BYTES:
        raise ValueError(f"answer larger than {MAX_BYTES} bytes")
    return parse_answer(raw)


def parse_answer(raw: bytes) -> HttpAnswer:
    """Status and body of an HTTP/1.x answer read until the server closed; ValueError if malformed."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("incomplete HTTP answer")
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if len(body) < length:
            raise ValueError("the server closed before the whole body was sent")
        body = body[:length]
    return HttpAnswer(int(rest[:3]), body)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, sep, body = body.partition(b"\r\n")
        if not sep:
            raise ValueError("truncated chunked body")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out)
        if len(body) < size + 2:
            raise ValueError("truncated chunked body")
        out += body[:size]
        body = body[size + 2 :]
