"""paho-mqtt's client, adapted to be driven by an asyncio loop at high message rates.

Everything private of paho 2 that cityingest relies on (paho is pinned below 2.3; the contract test
``tests/ingest/test_paho_contract.py`` fails, naming the hook, when an installed paho changes one):

* the methods overridden here, :data:`OVERRIDDEN_METHODS`, and the places paho calls them from;
* ``Client._in_packet["command"]`` and ``["packet"]`` (the PUBLISH being handled) and ``Client._sock``
  (the connected socket, to drain a TLS socket's decrypted bytes);
* ``MQTTMessage(mid=..., topic=<bytes>)`` and ``MQTTMessage._topic`` (the raw topic bytes, which
  ``ingest/records.py`` reads when a topic is not UTF-8).

The overrides:

* ``_sock_recv`` reads the socket in large chunks and serves paho's small reads from a buffer (paho reads
  a packet a few bytes at a time otherwise: three system calls per message); over TLS it reads record
  after record until the socket would block (a TLS read returns one record, often one message);
* ``_create_socket_connection`` returns a socket the event loop already connected (and, with TLS, already
  wrapped and through its handshake: :mod:`ingest.tls`), so (re)connecting never blocks the loop;
* ``_handle_publish`` decodes QoS 0/1 PUBLISH packets without building MQTT 5 property objects or
  matching per-topic callbacks, and hands each message to ``deliver``.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

_READ_BUFFER: Final = 262_144

OVERRIDDEN_METHODS: Final = {
    "_sock_recv": ("self", "bufsize"),
    "_handle_publish": ("self",),
    "_create_socket_connection": ("self",),
}
"""Private methods of ``paho.mqtt.client.Client`` overridden below, with the parameters they must have."""


class AsyncioPahoClient(paho.Client):
    """paho's MQTT 5 client with manual acks, buffered reads and sockets that asyncio connected."""

    def __init__(self, client_id: str) -> None:
        super().__init__(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, manual_ack=True
        )
        self.rbuf = bytearray()
        self.next_sock: socket.socket | None = None
        self.deliver: Callable[[paho.MQTTMessage], None] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self.rbuf:
            data = super()._sock_recv(_READ_BUFFER)
            if not data:
                return data
            self.rbuf += data
            sock = self._sock
            if isinstance(sock, ssl.SSLSocket):
                self._read_more_records(sock)
        chunk = bytes(self.rbuf[:bufsize])
        del self.rbuf[:bufsize]
        return chunk

    def _read_more_records(self, sock: ssl.SSLSocket) -> None:
        """Read on while the TLS socket has data, up to the buffer's size.

        A TLS read returns one record, and Mosquitto sends each message in a record of its own: reading
        one per readable event would cost every message a turn of the event loop. Reading until the
        socket would block also leaves no decrypted byte behind in the SSL object (``pending()``), where
        it would not make the socket readable again. An error or the end of the stream is left for the
        next read, after the bytes already buffered have been handled.
        """
        while len(self.rbuf) < _READ_BUFFER:
            try:
                more = sock.recv(_READ_BUFFER - len(self.rbuf))
            except OSError:  # ssl.SSLWantReadError (nothing more for now) included
                return
            if not more:
                return
            self.rbuf += more

    def _handle_publish(self) -> MQTTErrorCode:
        # paho decodes every MQTT 5 PUBLISH's properties into an object and matches per-topic callbacks,
        # which costs more than all of our validation; the bridge uses neither, so QoS 0/1 take this path.
        header: int = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if qos > 1 or self.deliver is None:
            return super()._handle_publish()
        packet: bytearray = self._in_packet["packet"]
        end = len(packet)
        pos = 2 + int.from_bytes(packet[0:2], "big")
        topic = bytes(packet[2:pos])
        mid = 0
        if qos:
            mid = int.from_bytes(packet[pos : pos + 2], "big")
            pos += 2
        props_len, shift = 0, 0
        while pos < end and shift <= 21:  # the properties' length: a variable byte integer
            byte = packet[pos]
            pos += 1
            props_len |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        else:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        pos += props_len
        if pos > end or not topic:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        message = paho.MQTTMessage(mid=mid, topic=topic)
        message.qos, message.dup, message.retain = qos, bool(header & 0x08), bool(header & 0x01)
        message.payload = bytes(packet[pos:])
        self.deliver(message)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _create_socket_connection(self) -> socket.socket:
        sock, self.next_sock = self.next_sock, None
        if sock is None:
            raise ConnectionError("no connected socket was prepared for paho")
        self.rbuf.clear()
        return sock
