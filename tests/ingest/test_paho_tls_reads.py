"""The bridge's paho client reads a TLS socket record after record until it would block.

A TLS read returns a single record, and Mosquitto sends every message in a record of its own: a client
that reads one record per readable event spends a turn of the event loop on every message (the bridge
ran at half its plain speed over TLS) and must not leave decrypted bytes behind in the SSL object.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading

import trustme

from ingest.paho_client import AsyncioPahoClient

RECORDS = [bytes([0x30, 3 + i % 5]) + bytes(range(3 + i % 5)) for i in range(300)]


def _serve(listener: socket.socket, context: ssl.SSLContext, sent: threading.Event) -> None:
    conn, _ = listener.accept()
    with context.wrap_socket(conn, server_side=True) as tls:
        for record in RECORDS:
            tls.sendall(record)  # one TLS record each
        sent.set()
        tls.recv(1)  # until the client closes


def _first_read(client: AsyncioPahoClient, tls: ssl.SSLSocket) -> bytes:
    # The server's session tickets come first: reading them alone answers "would block" once.
    for _ in range(10):
        select.select([tls], [], [], 5)
        try:
            return client._sock_recv(1)
        except BlockingIOError:
            continue
    raise AssertionError("no application data arrived")


def test_one_read_takes_every_record_the_tls_socket_holds() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    sent = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=_serve, args=(listener, server_context, sent), daemon=True)
        server.start()
        raw = socket.create_connection(listener.getsockname())
        with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert sent.wait(10)
            tls.setblocking(False)
            client = AsyncioPahoClient("tls-reads")
            client._sock = tls
            try:
                first = _first_read(client, tls)
                assert first + bytes(client.rbuf) == b"".join(RECORDS)
                assert tls.pending() == 0
            finally:
                client._sock = None
        server.join(10)
