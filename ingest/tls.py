"""TLS to the MQTT broker for the bridge: the context from settings, and a handshake on the event loop.

The bridge drives paho's socket from asyncio (see :mod:`ingest.mqtt`), so paho's own TLS (``tls_set``,
whose handshake blocks) is not used: the connected socket is wrapped and its handshake completed here,
without blocking the loop, and paho then reads and writes the :class:`ssl.SSLSocket` like a plain one.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Final

from core.tls import tls_context

__all__ = ["start_tls", "tls_context"]

HANDSHAKE_TIMEOUT_S: Final = 10.0


async def start_tls(sock: socket.socket, context: ssl.SSLContext, server_name: str) -> ssl.SSLSocket:
    """Wrap a connected non-blocking socket and complete the TLS handshake without blocking the loop."""
    tls = context.wrap_socket(sock, server_hostname=server_name, do_handshake_on_connect=False)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            while True:
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    await _ready(loop, tls, write=False)
                except ssl.SSLWantWriteError:
                    await _ready(loop, tls, write=True)
                else:
                    return tls
    except BaseException:
        tls.close()  # the wrapper owns the file descriptor now (the plain socket was detached)
        raise


async def _ready(loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket, *, write: bool) -> None:
    done: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    add(sock.fileno(), wake)
    try:
        await done
    finally:
        remove(sock.fileno())
