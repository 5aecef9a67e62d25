"""A minimal MQTT 3.1.1 QoS 1 publisher for benchmarks: pre-encoded packets over one blocking socket.

Why not paho: publishing through paho costs ~100 µs a message in Python (the simulator's own publisher
reaches ~6,000 messages/s alone on the 2-core machine), CPU that the pipeline under test needs. Why not
``mosquitto_pub -l``: it sends every line to one topic, and a simulated city has a topic per device.
Here the payloads are known in advance: they are encoded once, and a write of hundreds of packets is
one copy out of a buffer plus their packet ids. Packet ids cycle through 1..65535 and the window of
unacknowledged messages is capped well below that, so an id in flight is never reused (the pitfall
paho's own users must avoid).
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from array import array
from collections.abc import Sequence
from typing import Final

_CONNECT: Final = 0x10
_CONNACK: Final = 0x20
_PUBLISH_QOS1: Final = 0x32
_PUBACK: Final = 0x40
_DISCONNECT: Final = b"\xe0\x00"
MAX_PACKET_ID: Final = 65_535


class MqttError(Exception):
    """The broker refused us, closed the connection or acknowledged what we never sent."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


class PacketStream:
    """QoS 1 PUBLISH packets back to back in one buffer, their packet ids left blank until sent.

    One buffer rather than a bytes object per message: 300,000 held messages cost their own size, not
    three Python objects each (nor the 4 KiB that each of orjson's output bytes keeps allocated).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._starts = array("Q")
        self._id_at = array("Q")

    def append(self, topic: str, payload: bytes) -> None:
        """Add a PUBLISH of ``payload`` on ``topic``."""
        name = _string(topic)
        self._starts.append(len(self._buffer))
        self._buffer += bytes([_PUBLISH_QOS1]) + _varint(len(name) + 2 + len(payload)) + name
        self._id_at.append(len(self._buffer))
        self._buffer += b"\0\0" + payload

    def __len__(self) -> int:
        return len(self._starts)

    def packets(self, start: int, stop: int, ids: Sequence[int]) -> bytearray:
        """Packets ``start`` to ``stop`` (excluded) as one write, numbered with ``ids``."""
        begin = self._starts[start]
        end = self._starts[stop] if stop < len(self._starts) else len(self._buffer)
        out = bytearray(memoryview(self._buffer)[begin:end])
        for k, packet_id in zip(range(start, stop), ids, strict=True):
            at = self._id_at[k] - begin
            out[at : at + 2] = packet_id.to_bytes(2, "big")
        return out


class QoS1Publisher:
    """One MQTT connection (clean session) publishing at QoS 1, at most ``window`` messages unacknowledged."""

    def __init__(self, host: str, port: int, client_id: str, window: int = 1000) -> None:
        if not 0 < window < MAX_PACKET_ID:
            raise ValueError("the window must leave packet ids free")
        self.host, self.port, self.client_id, self.window = host, port, client_id, window
        self.acked = 0
        self._sock: socket.socket | None = None
        self._in_flight: set[int] = set()
        self._next_id = 0
        self._buffer = bytearray()

    def connect(self, timeout: float = 10.0) -> None:
        """Open the connection and wait for the broker's CONNACK."""
        self._sock = socket.create_connection((self.host, self.port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Protocol "MQTT" level 4, clean session, keep-alive off: we only ever send.
        body = _string("MQTT") + b"\x04\x02\x00\x00" + _string(self.client_id)
        self._sock.sendall(bytes([_CONNECT]) + _varint(len(body)) + body)
        reply = b""
        while len(reply) < 4:
            chunk = self._sock.recv(4 - len(reply))
            if not chunk:
                raise MqttError("the broker closed the connection before CONNACK")
            reply += chunk
        if reply[0] != _CONNACK or reply[3] != 0:
            raise MqttError(f"connection refused: {reply!r}")
        self._sock.settimeout(None)

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet acknowledged."""
        return len(self._in_flight)

    @property
    def room(self) -> int:
        """How many more messages may be sent before the window is full."""
        return self.window - len(self._in_flight)

    def send(self, stream: PacketStream, start: int, stop: int) -> None:
        """Send packets ``start`` to ``stop`` of ``stream`` in one write; they must fit in the window."""
        if stop - start > self.room:
            raise ValueError("more packets than the window has room for")
        sock = self._require()
        sock.sendall(stream.packets(start, stop, [self._take_id() for _ in range(start, stop)]))

    def _take_id(self) -> int:
        while True:
            self._next_id = self._next_id % MAX_PACKET_ID + 1
            if self._next_id not in self._in_flight:
                self._in_flight.add(self._next_id)
                return self._next_id

    def read_acks(self, timeout: float | None) -> int:
        """Take the acknowledgements that arrive within ``timeout`` seconds (None: wait for one)."""
        sock = self._require()
        readable, _, _ = select.select([sock], [], [], timeout)
        if not readable:
            return 0
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise MqttError(f"the broker closed the connection with {len(self._in_flight)} in flight")
        self._buffer += chunk
        return self._parse()

    def _parse(self) -> int:
        buf, pos, acked = self._buffer, 0, 0
        while len(buf) - pos >= 2:
            length, shift, i = 0, 0, pos + 1
            while i < len(buf) and buf[i] & 0x80:
                length |= (buf[i] & 0x7F) << shift
                shift += 7
                i += 1
            if i >= len(buf):
                break
            length |= buf[i] << shift
            end = i + 1 + length
            if end > len(buf):
                break
            if buf[pos] & 0xF0 == _PUBACK:
                packet_id = int.from_bytes(buf[i + 1 : i + 3], "big")
                if packet_id not in self._in_flight:
                    raise MqttError(f"PUBACK for packet id {packet_id}, which is not in flight")
                self._in_flight.remove(packet_id)
                acked += 1
            pos = end
        del buf[:pos]
        self.acked += acked
        return acked

    def wait_acked(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while self._in_flight:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.read_acks(left)
        return True

    def close(self) -> None:
        """Send DISCONNECT and close the socket. Idempotent."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendall(_DISCONNECT)
            self._sock.close()
            self._sock = None

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise MqttError("not connected")
        return self._sock
