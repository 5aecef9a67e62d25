"""The bridge's MQTT side: one persistent MQTT 5 session, driven by the asyncio loop, with manual acks.

paho-mqtt 2 does the protocol; we drive its socket from the event loop (``loop_read``/``loop_write``/
``loop_misc``) instead of paho's network thread: everything runs on one thread, so acks need no locks and
no thread hand-off, and reads are buffered (paho reads a packet a few bytes at a time otherwise).

Guarantees this module provides to the bridge:

* QoS 1 subscription with ``clean_start=False`` and a session expiry, under a stable client id: messages
  published while the bridge is away (or crashed) wait in the broker for it;
* MQTT 5 Receive Maximum = the in-flight window: the broker never has more unacknowledged messages
  outstanding to us than that, and :meth:`MqttSource.pause` stops reading as a second guard;
* :meth:`MqttSource.ack` acknowledges only on the connection that delivered the message (``generation``);
  after a reconnect the broker redelivers what was not acknowledged, so a stale ack is dropped;
* reconnects (and resubscribes) by itself with capped exponential backoff (:class:`core.runtime.Backoff`)
  after a broker restart; a broker that refuses the connection (bad credentials, not authorized) is
  logged as an error with its reason code and tried again with the same backoff, never in a tight loop;
* subscribes with Retain Handling 2 and Retain As Published off: the broker never sends its stored retained
  copies on (re)subscribe, and a live publish arrives without the retain flag, so a retained reading is
  taken once, when it is published (a copy that still carries the flag is dead-lettered by the bridge);
* no exception of the bridge's message handler reaches paho, which would otherwise keep the half-handled
  PUBLISH and hand it back forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from core.runtime import Backoff
from core.topics import telemetry_filter
from ingest.metrics import BridgeStats
from ingest.paho_client import AsyncioPahoClient
from ingest.settings import BridgeSettings
from ingest.tls import start_tls, tls_context

log = logging.getLogger(__name__)

_PACKETS_PER_TURN: Final = 2_000
_TURN_S: Final = 0.02
"""How long the reader means to keep the loop per turn. A message is never split, and one of 256 KiB of
invalid readings takes 50-100 ms to handle: after a turn that overran, the reader rests as long as it
overran (at most :data:`_MAX_REST_S`), so Kafka acks, the Kafka probe and /healthz, which need many short
loop iterations, keep running under a stream of such messages."""
_MIN_REST_S: Final = 0.001
_MAX_REST_S: Final = 0.01
_CONNECT_TIMEOUT_S: Final = 10.0
_BACKOFF_MIN_S: Final = 0.2
_BACKOFF_MAX_S: Final = 10.0
_CLOSE_TIMEOUT_S: Final = 5.0
_STABLE_CONNECTION_S: Final = 5.0

SUBSCRIBE_RETAIN_HANDLING: Final = SubscribeOptions.RETAIN_DO_NOT_SEND
"""MQTT 5 Retain Handling of the subscription: 2, the broker sends no retained message on subscribe."""

MessageHandler = Callable[[paho.MQTTMessage, int], None]
"""Called with each message and the connection generation that delivered it."""


class MqttSource:
    """Keeps the bridge subscribed to device telemetry and hands every message to ``on_message``."""

    def __init__(self, settings: BridgeSettings, on_message: MessageHandler, stats: BridgeStats) -> None:
        self._settings = settings
        self._stats = stats
        self._on_message = on_message
        self._filter = telemetry_filter(settings.mqtt_topic_prefix, settings.shared_group)
        self._loop = asyncio.get_running_loop()
        self._tls = tls_context(settings)
        self._client = self._build_client()
        self.generation = 0
        """Increases with every successful connection; acks are only valid within one."""
        self.connected = False
        self.subscribed = False
        self.refusal: str | None = None
        """The reason code of the broker's last refusal of our CONNECT, until a connection succeeds."""
        self._paused = False
        self._resting = False
        self._closing = False
        self._connack = asyncio.Event()
        self._lost = asyncio.Event()

    def _build_client(self) -> AsyncioPahoClient:
        s = self._settings
        client = AsyncioPahoClient(s.client_id)
        if s.mqtt_username is not None:
            client.username_pw_set(s.mqtt_username, s.mqtt_password)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.mqtt_session_expiry_s
        props.ReceiveMaximum = s.max_in_flight
        client.connect_async(
            s.mqtt_host, s.mqtt_port, s.mqtt_keepalive_s, clean_start=False, properties=props
        )
        client.on_connect = self._handle_connect
        client.on_subscribe = self._handle_subscribe
        client.on_disconnect = self._handle_disconnect
        client.deliver = self._handle_message
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        return client

    # --- driving paho from the event loop ---------------------------------------------------

    def _socket_open(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        # A new connection always reads, or its CONNACK would never arrive; the bridge pauses again
        # if its window is still full when messages come.
        self._paused = False
        self._loop.add_reader(sock, self._on_readable)

    def _socket_close(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _register_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._loop.add_writer(sock, self._client.loop_write)

    def _unregister_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._loop.remove_writer(sock)

    def _on_readable(self) -> None:
        client = self._client
        deadline = self._loop.time() + _TURN_S
        for _ in range(_PACKETS_PER_TURN):
            if self._paused or self._resting or client.socket() is None:
                return
            client.loop_read()
            if self._loop.time() > deadline:
                break
            if not client.rbuf:
                return
        overrun = self._loop.time() - deadline
        if overrun > _MIN_REST_S:
            self._rest(min(overrun, _MAX_REST_S))
        elif client.rbuf:
            # More packets are buffered: continue on the next turn so other work (Kafka acks) runs too.
            self._loop.call_soon(self._on_readable)

    def _rest(self, delay: float) -> None:
        """Stop reading for ``delay`` seconds, so the loop's other work runs after a turn that overran."""
        self._resting = True
        sock = self._client.socket()
        if sock is not None:
            self._loop.remove_reader(sock)
        self._loop.call_later(delay, self._end_rest)

    def _end_rest(self) -> None:
        self._resting = False
        sock = self._client.socket()
        if not self._paused and sock is not None:
            self._loop.add_reader(sock, self._on_readable)
            self._loop.call_soon(self._on_readable)

    def pause(self) -> None:
        """Stop reading messages (the in-flight window is full)."""
        if not self._paused:
            self._paused = True
            sock = self._client.socket()
            if sock is not None:
                self._loop.remove_reader(sock)

    def resume(self) -> None:
        """Read messages again, starting with any already buffered."""
        if self._paused:
            self._paused = False
            sock = self._client.socket()
            if sock is not None and not self._resting:  # else the rest's end resumes reading
                self._loop.add_reader(sock, self._on_readable)
                self._loop.call_soon(self._on_readable)

    # --- paho callbacks -------------------------------------------------------------------

    def _handle_connect(
        self, client: paho.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        if reason.is_failure:
            self.refusal = f"{reason} ({reason.value})"
            self._connack.set()
            return
        self.refusal = None
        self.connected = True
        self.generation += 1
        self._stats.mqtt_connects += 1
        if self._stats.mqtt_connects > 1:
            self._stats.mqtt_reconnects += 1
        log.info(
            "connected to MQTT %s:%s as %s (session present: %s); subscribing to %s",
            self._settings.mqtt_host,
            self._settings.mqtt_port,
            self._settings.client_id,
            flags.session_present,
            self._filter,
        )
        options = SubscribeOptions(qos=1, retainAsPublished=False, retainHandling=SUBSCRIBE_RETAIN_HANDLING)
        client.subscribe(self._filter, options=options)
        self._connack.set()

    def _handle_subscribe(
        self, _c: paho.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Properties | None
    ) -> None:
        granted = [r.value for r in reasons]
        self.subscribed = granted == [1]
        if not self.subscribed:
            log.error("MQTT subscription to %s not granted at QoS 1: %s", self._filter, granted)

    def _handle_disconnect(
        self, _c: paho.Client, _u: Any, _flags: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        was_connected, self.connected, self.subscribed = self.connected, False, False
        self._client.rbuf.clear()
        if not self._closing and was_connected:
            log.warning("lost the MQTT connection (%s); reconnecting", reason)
        self._lost.set()
        self._connack.set()

    def _handle_message(self, message: paho.MQTTMessage) -> None:
        generation = self.generation
        try:
            self._on_message(message, generation)
        except Exception:
            # The handler dead-letters what it fails on, so this is a bug in that very safety net. paho must
            # not see it (it would hand the same PUBLISH back forever and block every message behind it):
            # acknowledge the message so the ones behind it flow, and say loudly that it was lost.
            self._stats.messages_failed += 1
            log.exception("the bridge failed on a message from %r; acking it unhandled", message._topic)
            try:
                if message.qos:
                    self.ack(message.mid, message.qos, generation)
            except Exception:
                log.exception("cannot acknowledge message %s either", message.mid)

    # --- acks and lifecycle ---------------------------------------------------------------

    def ack(self, mid: int, qos: int, generation: int) -> bool:
        """Acknowledge a message on the connection that delivered it; False if that connection is gone."""
        if generation != self.generation or not self.connected:
            return False
        self._client.ack(mid, qos)
        return True

    async def _open_socket(self) -> socket.socket:
        s = self._settings
        infos = await self._loop.getaddrinfo(s.mqtt_host, s.mqtt_port, type=socket.SOCK_STREAM)
        error: OSError = OSError(f"no address for {s.mqtt_host}")
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    await self._loop.sock_connect(sock, addr)
            except (OSError, TimeoutError) as exc:
                sock.close()
                error = exc if isinstance(exc, OSError) else OSError(f"connect to {addr} timed out")
                continue
            # PUBACKs are tiny; Nagle would hold them back behind unacknowledged data.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is None:
                return sock
            try:
                return await start_tls(sock, self._tls, s.mqtt_host)
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError: a refused certificate
                sock.close()
                error = exc if isinstance(exc, OSError) else OSError(f"TLS handshake with {addr} timed out")
                continue
        raise error

    async def run(self) -> None:
        """Connect, subscribe and stay connected until cancelled; the keep-alive runs beside it, and an
        unexpected error of either fails this task."""
        async with asyncio.TaskGroup() as group:
            keepalive = group.create_task(self._keepalive(), name="mqtt-keepalive")
            try:
                await self._stay_connected()
            finally:
                keepalive.cancel()

    async def _stay_connected(self) -> None:
        s = self._settings
        backoff = Backoff(_BACKOFF_MIN_S, _BACKOFF_MAX_S, healthy_after_s=_STABLE_CONNECTION_S)
        while not self._closing:
            self._connack.clear()
            self._lost.clear()
            try:
                self._client.next_sock = await self._open_socket()
                self._client.reconnect()
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    await self._connack.wait()
            except (OSError, TimeoutError) as exc:
                self._abort_socket()
                delay = backoff.delay()
                log.warning(
                    "cannot connect to MQTT %s:%s: %r; retrying in %.1f s",
                    s.mqtt_host,
                    s.mqtt_port,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if not self.connected:
                self._abort_socket()
                delay = backoff.delay()
                if self.refusal is not None:
                    log.error(
                        "MQTT broker %s:%s refused the bridge: %s; check CITYINGEST_MQTT_USERNAME, "
                        "CITYINGEST_MQTT_PASSWORD and the broker's ACL; retrying in %.1f s",
                        s.mqtt_host,
                        s.mqtt_port,
                        self.refusal,
                        delay,
                    )
                else:
                    log.warning("the MQTT broker dropped the connection at once; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
                continue
            backoff.started()
            await self._lost.wait()
            if not self._closing:
                # Right after a stable connection this is the shortest delay; a connection dropped at once
                # (e.g. another client took over our client id) backs off ever longer: do not hammer.
                await asyncio.sleep(backoff.delay())

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._client.socket() is not None:
                self._client.loop_misc()

    def _abort_socket(self) -> None:
        self._client.rbuf.clear()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            self._client.loop_read()  # lets paho notice the closed socket and clean up

    async def close(self) -> None:
        """Flush pending acks, send DISCONNECT (the session stays on the broker) and stop. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self.pause()
        if self.connected:
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await self._lost.wait()
        self._abort_socket()
