"""Ports are checked the way servers bind them: a stopped server's TIME_WAIT sockets leave it free."""

from __future__ import annotations

import socket

from devstack.process import free_port, port_is_free


def _leave_time_wait(port: int) -> None:
    """Serve one connection on ``port`` and close it from the server's side, as a stopping server does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server closes first: its end (on `port`) goes to TIME_WAIT
        assert client.recv(1) == b""
        client.close()


def _time_wait_on(port: int) -> bool:
    # /proc/net/tcp: local address as HEXIP:HEXPORT, state 06 is TIME_WAIT.
    with open("/proc/net/tcp", encoding="ascii") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return any(row[1].endswith(f":{port:04X}") and row[3] == "06" for row in rows)


def test_port_with_only_time_wait_sockets_is_free() -> None:
    port = free_port()
    _leave_time_wait(port)
    assert _time_wait_on(port), "precondition: the port has a TIME_WAIT socket"
    # A plain bind without SO_REUSEADDR fails here; PostgreSQL, Mosquitto and uvicorn would start.
    assert port_is_free(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()


def test_port_with_a_listener_is_busy() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert not port_is_free(port)


def test_port_bound_on_every_address_is_busy_for_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", 0))  # noqa: S104 - the case under test
        server.listen()
        port = server.getsockname()[1]
        assert not port_is_free(port)
